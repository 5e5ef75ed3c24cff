//! The drain verdict's latency and its early verdicts, measured against the fixture game
//! server's own completion timestamps on a private PostgreSQL.
//!
//! Each run: a request with a pause is in flight; `drainwatch wait` attaches (so it never
//! saw the request start) and must print `drained` after the request's last byte went out.
//! latency = verdict line read - completion - quiet window. early = verdict before completion.

use drainwatch_tests::{
    db::PgServer,
    game::{mono_ns, GameServer},
    Drainwatch,
};
use serde_json::{json, Value};

use hdrhistogram::Histogram;

use crate::Table;

const QUIET_MS: u64 = 100;

pub fn run(runs: usize, table: &mut Table) -> Value {
    eprintln!("dw-bench: starting a private PostgreSQL and the fixture game server");
    let db = PgServer::start();
    let game = GameServer::start(&db, &["--pool", "2"]);
    let pid = game.pid.to_string();
    let quiet = format!("{QUIET_MS}ms");
    // µs, 1 µs to 60 s, 3 significant digits. Latency here is (verdict - completion), which
    // includes the quiet window and so is never negative unless the verdict was early.
    let mut after_completion =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let mut early = 0usize;
    let mut not_in_flight_at_attach = 0usize;
    for run in 0..runs {
        let pending = game.send_request(&format!("b{run}"), 1_500);
        game.wait_truth("in flight", |t| t.requests_in_flight == 1);
        let mut wait = Drainwatch::attach(&["wait", "--pid", &pid, "--json", "--quiet", &quiet]);
        if game.truth().requests_in_flight == 0 {
            // Attaching took longer than the request: nothing to measure in this run.
            not_in_flight_at_attach += 1;
        }
        let lines = wait.stdout_lines();
        let verdict = lines.iter().find(|l| l.contains("drainwatch.report/v1"));
        let seen = mono_ns();
        assert!(verdict.is_some(), "wait printed no report");
        assert!(pending.reply().starts_with("done"));
        let completed = game.truth().last_completion_mono_ns;
        if seen < completed {
            early += 1;
        }
        let latency = (seen as f64 - completed as f64) / 1e6 - QUIET_MS as f64;
        let since_completion_us = seen.saturating_sub(completed) / 1_000;
        after_completion.saturating_record(since_completion_us.max(1));
        eprint!(
            "\rdw-bench: verdict latency run {}/{runs}: {latency:+.2} ms   ",
            run + 1
        );
        // The probe comes down before the next run: a teardown holds the kernel's trace
        // event lock for about a second and would slow the next attach.
        drop(wait.finish());
    }
    eprintln!();
    let beyond_quiet = |us: u64| us as f64 / 1e3 - QUIET_MS as f64;
    let (p50, p99, max) = (
        beyond_quiet(after_completion.value_at_quantile(0.50)),
        beyond_quiet(after_completion.value_at_quantile(0.99)),
        beyond_quiet(after_completion.max()),
    );
    table.row(
        &format!("verdict_latency_ms p50 (after completion + quiet {QUIET_MS}ms)"),
        format!("{p50:.2}"),
        "",
    );
    table.row("verdict_latency_ms p99", format!("{p99:.2}"), "<= 5");
    table.row("verdict_latency_ms max", format!("{max:.2}"), "");
    table.row(&format!("early_verdicts ({runs} runs)"), early, "0");
    table.row(
        "runs where the request ended before attach",
        not_in_flight_at_attach,
        "0",
    );
    json!({
        "quiet_ms": QUIET_MS,
        "runs": runs,
        "verdict_latency_ms": {"p50": p50, "p99": p99, "max": max},
        "early_verdicts": early,
        "runs_not_in_flight_at_attach": not_in_flight_at_attach,
    })
}
