//! Faults while drainwatch runs: the target killed with -9 in the middle of `stop` and of
//! `wait`, a target that forks and execs during an audit, and signals sent through a pidfd
//! (so that a pid reused by another process is never signalled).

use std::{
    io::Write,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use drainwatch_tests::{db::PgServer, game::GameServer, *};
use serde_json::Value;

/// kill -9 of the target while `stop` waits for it to drain: stop ends at once with the
/// SIGKILL reported, sent by the helper and not by drainwatch.
#[test]
fn the_target_killed_with_sigkill_during_stop() {
    require_root();
    let db = PgServer::start();
    let dir = TempDir::new("kill-during-stop");
    let report_path = dir.path("report.json");
    // It ignores SIGTERM: stop would wait for its whole --timeout.
    let mut game = GameServer::start(&db, &["--pool", "1", "--on-term", "ignore"]);
    let pending = game.send_request("long", 20_000);
    game.wait_truth("in flight", |t| t.requests_in_flight == 1);
    let pid = game.pid.to_string();
    let mut stop = Drainwatch::spawn(&[
        "stop",
        "--pid",
        &pid,
        "--timeout",
        "60s",
        "--report",
        &report_path,
    ]);
    stop.wait_for_stderr("sending SIGTERM");
    let killed_at = Instant::now();
    let helper = signal_from_helper(libc::SIGKILL, game.pid);
    game.wait();
    drop(pending);
    let done = stop.finish();
    assert!(
        killed_at.elapsed() < Duration::from_secs(10),
        "stop took {:?} after the kill",
        killed_at.elapsed()
    );
    assert_eq!(done.code, 1, "{done:?}");
    let report = read_report(&report_path);
    assert_eq!(report["verdict"], "violations", "{report:#}");
    let kills = violations(&report, "sigkill");
    assert_eq!(kills.len(), 1, "{report:#}");
    assert_eq!(kills[0]["sender_tgid"], helper);
    assert_eq!(kills[0]["by_drainwatch"], false);
    let cut = violations(&report, "inflight_at_exit");
    assert_eq!(cut.len(), 1, "the request was cut: {report:#}");
    assert_eq!(report["targets"][0]["exit"]["signal"], "SIGKILL");
}

/// kill -9 of the target while `wait` waits for a request to finish: wait ends with the kill
/// and the cut request reported, never `drained`.
#[test]
fn the_target_killed_with_sigkill_during_wait() {
    require_root();
    let db = PgServer::start();
    let mut game = GameServer::start(&db, &["--pool", "1"]);
    let pending = game.send_request("long", 20_000);
    game.wait_truth("in flight", |t| t.requests_in_flight == 1);
    let pid = game.pid.to_string();
    let mut wait = Drainwatch::spawn(&["wait", "--pid", &pid, "--json"]);
    wait.wait_for_stderr("attached to");
    let helper = signal_from_helper(libc::SIGKILL, game.pid);
    game.wait();
    drop(pending);
    let done = wait.finish();
    assert_eq!(done.code, 1, "{done:?}");
    let report: Value = serde_json::from_str(done.stdout.lines().last().unwrap()).unwrap();
    assert_eq!(report["verdict"], "violations", "{report:#}");
    assert!(
        report["drain"]["drained_at_ms"].is_null(),
        "never drained: {report:#}"
    );
    let kills = violations(&report, "sigkill");
    assert_eq!(kills.len(), 1, "{report:#}");
    assert_eq!(kills[0]["sender_tgid"], helper);
    assert_eq!(
        violations(&report, "inflight_at_exit").len(),
        1,
        "{report:#}"
    );
}

/// A named target that forks and execs another program during the audit: the child is a
/// target from its fork, is reported under its new name, and its SIGKILL is seen.
#[test]
fn a_target_that_forks_and_execs_during_the_audit() {
    require_root();
    let dir = TempDir::new("fork-exec");
    let report_path = dir.path("report.json");
    let child_pid_file = dir.path("child.pid");
    // A shell that waits for a line, then starts `sleep` in the background (fork + exec).
    let mut shell = Command::new("bash")
        .args([
            "-c",
            &format!("read -r _; sleep 60 & echo $! > {child_pid_file}; wait"),
        ])
        .stdin(Stdio::piped())
        .spawn()
        .expect("start bash");
    let pid = shell.id().to_string();
    let audit = Drainwatch::attach(&["audit", "--pid", &pid, "--report", &report_path]);
    writeln!(shell.stdin.as_mut().unwrap(), "go").expect("wake the shell");
    let deadline = Instant::now() + PATIENCE;
    let child: u32 = loop {
        let text = std::fs::read_to_string(&child_pid_file).unwrap_or_default();
        if let Ok(child) = text.trim().parse() {
            // The exec has happened once /proc shows the new program.
            let comm = std::fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
            if comm.trim() == "sleep" {
                break child;
            }
        }
        assert!(Instant::now() < deadline, "the shell never started sleep");
        std::thread::sleep(Duration::from_millis(10));
    };
    let helper = signal_from_helper(libc::SIGKILL, child);
    // bash's `wait` returns once sleep is gone, and the shell exits: the audit ends.
    assert!(
        wait_with_deadline(&mut shell, PATIENCE).is_some(),
        "bash ends"
    );
    let done = audit.finish();
    assert_eq!(done.code, 1, "{done:?}");
    let report = read_report(&report_path);
    let kills = violations(&report, "sigkill");
    assert_eq!(kills.len(), 1, "{report:#}");
    assert_eq!(kills[0]["pid"], child);
    assert_eq!(kills[0]["sender_tgid"], helper);
    let child_target = report["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["pid"] == child)
        .unwrap_or_else(|| panic!("the exec'd child is a target: {report:#}"));
    assert_eq!(child_target["comm"], "sleep", "named after the exec");
    assert_eq!(child_target["parent_pid"], shell.id());
    assert_eq!(child_target["exit"]["signal"], "SIGKILL");
}

/// stop signals through a pidfd opened before the probe is attached, never with kill(2):
/// if the target exits and its pid is given to another process meanwhile, the pidfd still
/// names the old process and the signal goes nowhere. (Forcing a real pid reuse is not
/// deterministic on a shared machine; the syscalls drainwatch makes are.)
#[test]
fn stop_signals_through_a_pidfd_never_by_pid() {
    require_root();
    let dir = TempDir::new("pidfd");
    let trace = dir.path("strace.out");
    let mut server = Server::start(&[]);
    let pid = server.pid.to_string();
    let status = Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-e",
            "trace=pidfd_open,pidfd_send_signal,kill",
            "-o",
        ])
        .arg(&trace)
        .arg(drainwatch_bin())
        .args(["stop", "--pid", &pid])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run strace (`cargo xtask setup` installs it)");
    assert_eq!(status.code(), Some(0), "stop of a server with a handler");
    server.wait();
    let calls = std::fs::read_to_string(&trace).unwrap();
    assert!(
        calls.contains(&format!("pidfd_open({pid},")),
        "a pidfd for the target: {calls}"
    );
    assert!(
        calls.contains("pidfd_send_signal(") && calls.contains("SIGTERM"),
        "SIGTERM through the pidfd: {calls}"
    );
    assert!(
        !calls.contains(&format!("kill({pid},")),
        "no kill(2) by pid: {calls}"
    );
}
