//! Attach and detach time (issue #27: a release over 100 servers pays both 200 times):
//! `drainwatch wait --pid PID` started against an idle target, timed from the command's
//! start to its "attached to" line (attach), and from its verdict on stdout to its exit
//! (detach: the probe comes down after drainwatch has exited, host/detach.rs).
//!
//! Two targets: the fixture echo server (no TLS library: no TLS hooks), and a Python
//! process that maps libssl (its `ssl` module) and holds an upstream connection, so that
//! its TLS library is hooked at attach (session/attach.rs hooks TLS in a target that talks
//! outward); the report's `coverage.tls_libraries` must say it was.

use std::{
    io::{BufRead, BufReader},
    net::TcpListener,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use drainwatch_tests::{drainwatch_bin, Server};
use serde_json::{json, Value};

use crate::{median, Table};

/// Attach goals (issue #27): without TLS hooks, with them; verdict to exit.
const ATTACH_GOAL_MS: f64 = 300.0;
const ATTACH_TLS_GOAL_MS: f64 = 600.0;
const DETACH_GOAL_MS: f64 = 100.0;

struct Timing {
    attach_ms: f64,
    detach_ms: f64,
    report: Value,
}

/// One `drainwatch wait --pid PID --json`, timed.
fn time_wait(pid: u32) -> Timing {
    let started = Instant::now();
    let mut child = Command::new(drainwatch_bin())
        .args([
            "wait",
            "--pid",
            &pid.to_string(),
            "--json",
            "--timeout",
            "30s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start drainwatch wait");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut report = Value::Null;
    let mut verdict_at = None;
    for line in stdout.lines().map_while(Result::ok) {
        if line.contains("drainwatch.report/v1") {
            verdict_at = Some(Instant::now());
            report = serde_json::from_str(&line).expect("the verdict is JSON");
            break;
        }
    }
    let verdict_at = verdict_at.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("wait printed no verdict")
    });
    let exited = wait_exit(&mut child);
    let exited_at = Instant::now();
    assert!(exited, "wait did not exit after its verdict");
    // The stderr reader may lag behind the exit on a busy machine: its lines are waited
    // for (each was stamped when read), not only those already sent.
    let attached_at = std::iter::from_fn(|| rx.recv_timeout(Duration::from_secs(10)).ok())
        .find(|(_, line)| line.starts_with("drainwatch: attached to"))
        .map(|(at, _)| at)
        .expect("wait said it attached");
    Timing {
        attach_ms: (attached_at - started).as_secs_f64() * 1e3,
        detach_ms: (exited_at - verdict_at).as_secs_f64() * 1e3,
        report,
    }
}

/// waitpid(2) itself, not a poll: the exit is seen the moment it happens. False (and the
/// child killed) if it has not exited within 30 s.
fn wait_exit(child: &mut Child) -> bool {
    let (tx, rx) = mpsc::channel();
    let pid = child.id() as libc::pid_t;
    thread::spawn(move || {
        let mut status = 0;
        // SAFETY: waitpid on our own child, which nothing else waits for.
        let reaped = unsafe { libc::waitpid(pid, &mut status, 0) } == pid;
        let _ = tx.send(reaped);
    });
    let reaped = rx.recv_timeout(Duration::from_secs(30)).unwrap_or(false);
    if !reaped {
        let _ = child.kill();
    }
    reaped
}

/// A Python process with libssl mapped and an upstream connection: its TLS library is
/// hooked at attach.
fn tls_target(listener: &TcpListener) -> Child {
    let python = std::env::var("DW_PYTHON").unwrap_or_else(|_| "python3".into());
    let port = listener.local_addr().expect("listener address").port();
    let script = format!(
        "import ssl, socket, sys, time\n\
         s = socket.create_connection(('127.0.0.1', {port}))\n\
         print('ready', flush=True)\n\
         time.sleep(600)\n"
    );
    let mut child = Command::new(python)
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the Python TLS target");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("the Python target says ready");
    assert_eq!(line.trim(), "ready", "the Python target did not start");
    child
}

fn summarize(name: &str, timings: &[Timing], goal: f64, table: &mut Table) -> Value {
    let attach: Vec<f64> = timings.iter().map(|t| t.attach_ms).collect();
    let detach: Vec<f64> = timings.iter().map(|t| t.detach_ms).collect();
    let max = |v: &[f64]| v.iter().copied().fold(f64::NAN, f64::max);
    let (attach_p50, attach_max) = (median(&attach), max(&attach));
    let (detach_p50, detach_max) = (median(&detach), max(&detach));
    table.row(
        &format!("attach_ms p50 / max ({name}, command start to attached)"),
        format!("{attach_p50:.0} / {attach_max:.0}"),
        &format!("<= {goal:.0}"),
    );
    table.row(
        &format!("verdict_to_exit_ms p50 / max ({name})"),
        format!("{detach_p50:.1} / {detach_max:.1}"),
        &format!("<= {DETACH_GOAL_MS:.0}"),
    );
    json!({
        "runs": timings.len(),
        "attach_ms": {"p50": attach_p50, "max": attach_max, "goal": goal},
        "verdict_to_exit_ms": {"p50": detach_p50, "max": detach_max, "goal": DETACH_GOAL_MS},
    })
}

pub fn run(runs: usize, table: &mut Table) -> Value {
    let runs = runs.clamp(1, 20);
    eprintln!("dw-bench: attach and detach time, {runs} runs per target");
    let server = Server::start(&[]);
    let plain: Vec<Timing> = (0..runs).map(|_| time_wait(server.pid)).collect();
    drop(server);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the upstream listener");
    let mut python = tls_target(&listener);
    let tls: Vec<Timing> = (0..runs).map(|_| time_wait(python.id())).collect();
    let _ = python.kill();
    let _ = python.wait();
    let hooked = tls.iter().all(|t| {
        t.report["coverage"]["tls_libraries"]
            .as_array()
            .is_some_and(|libs| !libs.is_empty())
    });
    assert!(
        hooked,
        "the Python target's TLS library was not hooked: {:#}",
        tls[0].report
    );
    json!({
        "lifecycle": {
            "no_tls_hooks": summarize("no TLS hooks", &plain, ATTACH_GOAL_MS, table),
            "tls_hooks": summarize("TLS hooks", &tls, ATTACH_TLS_GOAL_MS, table),
        }
    })
}
