//! `dw-soak`: randomized runs of drainwatch against the fixture game server on a private
//! PostgreSQL, each verdict compared with the fixture's own ground truth (its truth file:
//! requests in flight, transactions open, the CLOCK_MONOTONIC time of the last completion).
//! Behind `cargo xtask soak`; too long for the default test run. Needs root.
//!
//! `dw-soak [--runs 100] [--seed N] [--out target/soak/results.json]`
//!
//! Scenarios, picked at random with random pauses, quiet windows and kill points:
//! - `kill9`: `audit --pid` while a payment is in flight (or the server is idle), then
//!   `kill -9` from another process. Must never be `clean`.
//! - `stop_graceful`: `stop` with a payment in flight on a server that finishes its work on
//!   SIGTERM. Must be `clean`, and drained no earlier than the payment's completion.
//! - `stop_default`: `stop` mid-payment on a server without a SIGTERM handler: the payment
//!   is cut. Must never be `clean`.
//! - `wait_before` / `wait_after`: `wait` attached before the payment starts (its start is
//!   seen) or after (it was in flight at attach). The verdict must come after completion.
//!
//! Tallies: false `clean` (a clean verdict on a run where the truth says work was cut or a
//! SIGKILL was sent) and early `drained` (a drained verdict before the last completion).
//! Exits 1 if either is above 0.

use std::{
    collections::BTreeMap,
    io::Write,
    path::PathBuf,
    process::ExitCode,
    thread,
    time::{Duration, Instant},
};

use drainwatch_tests::{
    db::PgServer,
    game::{mono_ns, GameServer},
    read_report, signal_from_helper, Drainwatch, TempDir,
};
use serde_json::{json, Value};

/// xorshift64*: reproducible from the printed seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

const SCENARIOS: [&str; 5] = [
    "kill9",
    "stop_graceful",
    "stop_default",
    "wait_before",
    "wait_after",
];

/// One run's outcome.
struct Outcome {
    verdict: String,
    false_clean: bool,
    early: bool,
    /// `wait`'s verdict time minus completion minus the quiet window, ms.
    late_ms: Option<f64>,
    detail: String,
}

fn ms(ns: i128) -> f64 {
    ns as f64 / 1e6
}

fn kill9(db: &PgServer, rng: &mut Rng) -> Outcome {
    let mut game = GameServer::start(db, &["--pool", "2"]);
    let dir = TempDir::new("soak-kill9");
    let report_path = dir.path("report.json");
    let pid = game.pid.to_string();
    let audit = Drainwatch::attach(&["audit", "--pid", &pid, "--report", &report_path]);
    let busy = rng.chance(80);
    let pending = busy.then(|| game.send_request("pay", rng.range(100, 600)));
    if busy {
        if rng.chance(50) {
            game.wait_truth("inside the transaction", |t| t.transactions_open == 1);
        } else {
            game.wait_truth("in flight", |t| t.requests_in_flight == 1);
        }
        thread::sleep(Duration::from_millis(rng.range(0, 80)));
    }
    let before = game.truth();
    signal_from_helper(libc::SIGKILL, game.pid);
    game.wait();
    drop(pending);
    let done = audit.finish();
    let report = read_report(&report_path);
    let verdict = report["verdict"].as_str().unwrap_or("?").to_string();
    Outcome {
        false_clean: verdict == "clean",
        early: false,
        late_ms: None,
        detail: format!(
            "in flight before the kill: {} request(s), {} transaction(s); exit {}",
            before.requests_in_flight, before.transactions_open, done.code
        ),
        verdict,
    }
}

fn stop(db: &PgServer, rng: &mut Rng, graceful: bool) -> Outcome {
    let on_term = if graceful { "graceful" } else { "default" };
    let mut game = GameServer::start(db, &["--pool", "2", "--on-term", on_term]);
    let dir = TempDir::new("soak-stop");
    let report_path = dir.path("report.json");
    let pid = game.pid.to_string();
    let pause = rng.range(200, 900);
    let pending = game.send_request("pay", pause);
    if graceful || rng.chance(50) {
        game.wait_truth("in flight", |t| t.requests_in_flight == 1);
    } else {
        game.wait_truth("inside the transaction", |t| t.transactions_open == 1);
    }
    let quiet = format!("{}ms", rng.range(20, 200));
    let mut stop = Drainwatch::spawn(&[
        "stop",
        "--pid",
        &pid,
        "--quiet",
        &quiet,
        "--report",
        &report_path,
        "--json",
    ]);
    stop.wait_for_stderr("sending SIGTERM");
    let signalled = mono_ns();
    let before = game.truth();
    let reply = pending.reply();
    game.wait();
    let done = stop.finish();
    let report = read_report(&report_path);
    let verdict = report["verdict"].as_str().unwrap_or("?").to_string();
    let truth = game.truth();
    // Cut: the server died with the payment unfinished (no reply, or no completion counted).
    let cut = !reply.starts_with("done") || truth.completed == 0;
    // `drain_ms` runs to the drained verdict or to the exit, whichever comes first (a server
    // that exits right after its last reply ends the drain before the quiet window does), so
    // it bounds earliness only; latency is measured in the `wait` scenarios.
    let early = match report["drain"]["drain_ms"].as_f64() {
        Some(drain_ms) if !cut => {
            let remaining = ms(truth.last_completion_mono_ns as i128 - signalled as i128);
            // The signal went out just before its line was read: 5 ms of reading lag.
            drain_ms + 5.0 < remaining
        }
        _ => false,
    };
    Outcome {
        false_clean: cut && verdict == "clean",
        early,
        late_ms: None,
        detail: format!(
            "pause {pause}ms quiet {quiet}; at SIGTERM {} request(s), {} transaction(s); cut {cut}; exit {}",
            before.requests_in_flight, before.transactions_open, done.code
        ),
        verdict,
    }
}

fn wait(db: &PgServer, rng: &mut Rng, attach_first: bool) -> Outcome {
    let mut game = GameServer::start(db, &["--pool", "2"]);
    let pid = game.pid.to_string();
    let pause = rng.range(100, 900);
    // Attached first, the payment is sent the moment `wait` says it is attached, within a
    // millisecond or two: a quiet window of 100 ms or more cannot elapse before it starts,
    // so any verdict before its completion is early.
    let quiet = if attach_first {
        rng.range(100, 300)
    } else {
        rng.range(20, 200)
    };
    let quiet_arg = format!("{quiet}ms");
    let args = ["wait", "--pid", &pid, "--json", "--quiet", &quiet_arg];
    let (mut waiter, pending) = if attach_first {
        let waiter = Drainwatch::attach(&args);
        (waiter, game.send_request("pay", pause))
    } else {
        let pending = game.send_request("pay", pause);
        game.wait_truth("in flight", |t| t.requests_in_flight == 1);
        (Drainwatch::attach(&args), pending)
    };
    let lines = waiter.stdout_lines();
    let verdict_line = lines.iter().find(|l| l.contains("drainwatch.report/v1"));
    let seen = mono_ns();
    let reply = pending.reply();
    let done = waiter.finish();
    let truth = game.truth();
    let report: Value = verdict_line
        .and_then(|l| serde_json::from_str(&l).ok())
        .unwrap_or(Value::Null);
    let verdict = report["verdict"].as_str().unwrap_or("none").to_string();
    signal_from_helper(libc::SIGTERM, game.pid);
    game.wait();
    let late = ms(seen as i128 - truth.last_completion_mono_ns as i128);
    Outcome {
        false_clean: false,
        early: seen < truth.last_completion_mono_ns,
        late_ms: Some(late - quiet as f64),
        detail: format!(
            "pause {pause}ms quiet {quiet}ms; reply {:?}; exit {}",
            reply.trim(),
            done.code
        ),
        verdict,
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let runs: usize = flag("--runs").and_then(|r| r.parse().ok()).unwrap_or(100);
    let seed: u64 = flag("--seed")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| mono_ns() | 1);
    let out = PathBuf::from(flag("--out").unwrap_or_else(|| "target/soak/results.json".into()));
    eprintln!("dw-soak: {runs} runs, seed {seed} (rerun with --seed {seed})");
    let mut rng = Rng(seed);
    let started = Instant::now();
    let db = PgServer::start();
    let mut tally: BTreeMap<&str, BTreeMap<String, u64>> = BTreeMap::new();
    let (mut false_clean, mut early) = (0u64, 0u64);
    let mut late: Vec<f64> = Vec::new();
    let mut failures = Vec::new();
    for run in 0..runs {
        let scenario = SCENARIOS[(rng.next() % SCENARIOS.len() as u64) as usize];
        let outcome = match scenario {
            "kill9" => kill9(&db, &mut rng),
            "stop_graceful" => stop(&db, &mut rng, true),
            "stop_default" => stop(&db, &mut rng, false),
            "wait_before" => wait(&db, &mut rng, true),
            _ => wait(&db, &mut rng, false),
        };
        *tally
            .entry(scenario)
            .or_default()
            .entry(outcome.verdict.clone())
            .or_default() += 1;
        false_clean += outcome.false_clean as u64;
        early += outcome.early as u64;
        late.extend(outcome.late_ms);
        let bad = outcome.false_clean || outcome.early;
        eprintln!(
            "dw-soak: run {:>3}/{runs} {scenario:<14} {:<10} {}{}",
            run + 1,
            outcome.verdict,
            outcome.detail,
            if bad { "  <-- WRONG" } else { "" }
        );
        if bad {
            failures.push(format!("run {} {scenario}: {}", run + 1, outcome.detail));
        }
    }
    late.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        late.get(((late.len() as f64 - 1.0) * q).round() as usize)
            .copied()
    };
    let mut table = String::from("| scenario | runs | verdicts |\n|---|---|---|\n");
    for (scenario, verdicts) in &tally {
        let n: u64 = verdicts.values().sum();
        let list: Vec<String> = verdicts.iter().map(|(v, c)| format!("{v} {c}")).collect();
        table.push_str(&format!("| {scenario} | {n} | {} |\n", list.join(", ")));
    }
    let text = format!(
        "dw-soak: {runs} runs in {:.0} s, seed {seed}\n\n{table}\nfalse clean: {false_clean}\n\
         early drained: {early}\n`wait` verdict after completion, beyond the quiet window, ms: \
         min {:.2}, p50 {:.2}, max {:.2}\n",
        started.elapsed().as_secs_f64(),
        pick(0.0).unwrap_or(f64::NAN),
        pick(0.5).unwrap_or(f64::NAN),
        pick(1.0).unwrap_or(f64::NAN),
    );
    println!("{text}");
    for failure in &failures {
        println!("WRONG: {failure}");
    }
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).expect("create the results directory");
    }
    let json = json!({
        "runs": runs,
        "seed": seed,
        "secs": started.elapsed().as_secs_f64().round(),
        "false_clean": false_clean,
        "early_drained": early,
        "verdicts": tally,
        "failures": failures,
    });
    let mut file = std::fs::File::create(&out).expect("create results.json");
    writeln!(file, "{}", serde_json::to_string_pretty(&json).unwrap()).unwrap();
    std::fs::write(out.with_extension("md"), text).expect("write results.md");
    eprintln!("dw-soak: wrote {}", out.display());
    if false_clean > 0 || early > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
