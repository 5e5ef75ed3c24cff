//! Bad input: one clear line on stderr, exit 2, nothing attached.

use drainwatch_tests::*;

fn assert_usage_error(args: &[&str], expected: &str) {
    let done = run_drainwatch(args);
    assert_eq!(done.code, 2, "{args:?}: {done:?}");
    assert_eq!(
        done.stderr.lines().count(),
        1,
        "{args:?}: one line: {}",
        done.stderr
    );
    assert!(done.stderr.starts_with("drainwatch: "), "{}", done.stderr);
    assert!(done.stderr.contains(expected), "{args:?}: {}", done.stderr);
    assert!(done.stdout.is_empty(), "{args:?}: {}", done.stdout);
}

#[test]
fn bad_input_is_one_line_and_exit_2() {
    assert_usage_error(&["audit", "--pid", "0"], "invalid pid");
    assert_usage_error(&["audit", "--pid", "abc"], "invalid pid");
    assert_usage_error(
        &["audit", "--pid", "1", "--duration", "30"],
        "like 250ms, 30s or 5m",
    );
    assert_usage_error(
        &["audit", "--pid", "1", "--db-port", "70000"],
        "from 1 to 65535",
    );
    assert_usage_error(&["audit", "--pid", "1", "--db", "localhost"], "IP:PORT");
    assert_usage_error(&["audit"], "name what to audit");
    assert_usage_error(&["audit", "--frobnicate"], "--frobnicate");
    assert_usage_error(&["bogus"], "bogus");
}

#[test]
fn stop_refuses_init_and_sigkill_and_bad_signals() {
    assert_usage_error(&["stop", "--pid", "1"], "never stops init");
    let me = std::process::id().to_string();
    assert_usage_error(
        &["stop", "--pid", &me, "--signal", "KILL"],
        "not a graceful stop",
    );
    assert_usage_error(
        &["stop", "--pid", &me, "--signal", "TERMINATE"],
        "invalid signal",
    );
    assert_usage_error(
        &["stop", "--pid", &me, "--timeout", "0s"],
        "positive duration",
    );
    assert_usage_error(
        &["wait", "--pid", &me, "--timeout", "soon"],
        "like 250ms, 30s or 5m",
    );
}

#[test]
fn a_pid_that_does_not_exist_is_refused_before_attaching() {
    // pid_max is at most 2^22, so this pid cannot exist.
    assert_usage_error(
        &["audit", "--pid", "4194304"],
        "no process with pid 4194304",
    );
}

#[test]
fn an_unwritable_report_path_is_found_before_the_run() {
    assert_usage_error(
        &[
            "audit",
            "--pid",
            "1",
            "--report",
            "/nonexistent-dir/report.json",
        ],
        "cannot write report file /nonexistent-dir/report.json",
    );
}

/// tracefs not mounted and not mountable (here: in a private mount namespace where
/// /sys/kernel is an empty read-only tmpfs, so there is nowhere to mount it): one line that
/// says how to fix it, exit 2.
#[test]
fn tracefs_that_cannot_be_mounted_is_one_clear_line() {
    require_root();
    let me = std::process::id();
    let script = format!(
        "mount --make-rprivate / && mount -t tmpfs -o ro,size=64k tmpfs /sys/kernel && \
         exec {} audit --pid {me} --duration 1s",
        drainwatch_bin().display()
    );
    let out = std::process::Command::new("unshare")
        .args(["--mount", "sh", "-c", &script])
        .output()
        .expect("unshare (util-linux) runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("tracefs"), "{stderr}");
    assert!(
        stderr.contains("mount -t tracefs tracefs /sys/kernel/tracing"),
        "says how to fix it: {stderr}"
    );
}

/// A zombie (exited, not yet reaped by its parent) is not a process to watch: its exit has
/// already happened, and an audit of it would wait for an exit it can never see.
#[test]
fn a_zombie_pid_is_a_usage_error() {
    require_root();
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    let deadline = std::time::Instant::now() + PATIENCE;
    // Not reaped until the end of the test: it stays a zombie.
    while !std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_default()
        .contains(") Z ")
    {
        assert!(std::time::Instant::now() < deadline, "never a zombie");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_usage_error(
        &["audit", "--pid", &pid.to_string()],
        &format!("no process with pid {pid}"),
    );
    let _ = child.wait();
}
