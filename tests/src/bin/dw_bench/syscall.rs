//! What drainwatch costs a process it does not watch, per system call: the CPU time of
//! `getppid()` (no work in the kernel beyond the syscall path itself, and not cached by
//! glibc) in this process, with nothing attached and while drainwatch watches an unrelated
//! server, interleaved over rounds. Hooks on `raw_syscalls` put every task of the host on
//! the syscall slow path (docs/hooks.md); socket-level hooks should leave this at 1.0.

use std::{thread, time::Duration};

use drainwatch_tests::Server;
use serde_json::{json, Value};

use crate::{median, tracer::Tracer, Table};

/// getppid() calls per batch, and batches per trial (the fastest batch counts: CPU time
/// excludes preemption, but not cache and TLB misses after another task ran).
const CALLS: u32 = 200_000;
const BATCHES: usize = 10;

/// CPU time of this thread, in ns.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec pointer; CLOCK_THREAD_CPUTIME_ID always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// ns of CPU per getppid(), the fastest of [`BATCHES`] batches.
fn getppid_ns() -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..BATCHES {
        let start = thread_cpu_ns();
        for _ in 0..CALLS {
            // SAFETY: getppid has no arguments and no side effects. Called through
            // syscall(2) so that no library cache can answer it.
            unsafe { libc::syscall(libc::SYS_getppid) };
        }
        let ns = (thread_cpu_ns() - start) as f64 / CALLS as f64;
        best = best.min(ns);
    }
    best
}

pub fn run(rounds: usize, table: &mut Table) -> Value {
    let server = Server::start(&[]);
    let mut alone = Vec::new();
    let mut beside = Vec::new();
    for round in 0..rounds {
        // Alternate which configuration runs first.
        for attached in [round % 2 == 1, round % 2 == 0] {
            let tracer = attached.then(|| Tracer::drainwatch(server.pid, false));
            thread::sleep(Duration::from_millis(200));
            let ns = getppid_ns();
            if let Some(tracer) = tracer {
                tracer.stop();
                beside.push(ns);
            } else {
                alone.push(ns);
            }
            eprintln!(
                "dw-bench: round {}/{rounds} getppid {:<28} {ns:>8.1} ns",
                round + 1,
                if attached {
                    "beside drainwatch"
                } else {
                    "alone"
                }
            );
            thread::sleep(Duration::from_millis(300));
        }
    }
    let ratio = median(&alone) / median(&beside);
    let per_round: Vec<f64> = alone.iter().zip(&beside).map(|(a, b)| a / b).collect();
    let hooks = std::env::var("DRAINWATCH_HOOKS").unwrap_or_else(|_| "default".into());
    table.row(
        &format!(
            "bystander_syscall_ratio (getppid ns alone ÷ beside drainwatch, hooks {hooks}; {:.0} ns ÷ {:.0} ns)",
            median(&alone),
            median(&beside)
        ),
        format!(
            "{ratio:.3} (rounds: {})",
            per_round
                .iter()
                .map(|x| format!("{x:.3}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        ">= 0.95",
    );
    json!({
        "bystander_syscall_ratio": ratio,
        "bystander_syscall": {
            "hooks": hooks,
            "getppid_ns_alone": alone,
            "getppid_ns_beside_drainwatch": beside,
            "ratio_per_round": per_round,
            "calls_per_batch": CALLS,
            "batches": BATCHES,
        },
    })
}
