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
    assert_parse_error(&["audit"], "<--pid <PID>|--comm <NAME>", "audit");
    assert_parse_error(&["audit", "--frobnicate"], "--frobnicate", "audit");
    assert_parse_error(&["bogus"], "bogus", "");
}

/// What clap cannot parse: its whole message as systemctl and kubectl users know it (the
/// first line `drainwatch: ...` says what is wrong, then the tip and the command's usage, then
/// where its help is), exit 2.
fn assert_parse_error(args: &[&str], expected: &str, command: &str) -> String {
    let done = run_drainwatch(args);
    assert_eq!(done.code, 2, "{args:?}: {done:?}");
    let first = done.stderr.lines().next().unwrap_or_default();
    assert!(first.starts_with("drainwatch: "), "{}", done.stderr);
    assert!(first.contains(expected), "{args:?}: {}", done.stderr);
    let help = match command {
        "" => "try `drainwatch --help`.".to_string(),
        c => format!("try `drainwatch {c} --help`."),
    };
    assert!(
        done.stderr.trim_end().ends_with(&help),
        "{args:?}: {}",
        done.stderr
    );
    assert!(done.stdout.is_empty(), "{args:?}: {}", done.stdout);
    done.stderr
}

#[test]
fn parse_errors_carry_clap_s_tips_and_the_command_s_usage() {
    let text = assert_parse_error(
        &["stop", "--pdi", "5"],
        "unexpected argument '--pdi'",
        "stop",
    );
    assert!(
        text.contains("tip: a similar argument exists: '--pid'"),
        "{text}"
    );
    assert!(text.contains("Usage: drainwatch stop "), "{text}");
    let text = assert_parse_error(&["check"], "not provided: <--pid <PID>|", "check");
    assert!(text.contains("Usage: drainwatch check "), "{text}");
    let text = assert_parse_error(
        &["completions", "tcsh"],
        "invalid value 'tcsh'",
        "completions",
    );
    assert!(
        text.contains("[possible values: bash, elvish, fish, powershell, zsh]"),
        "{text}"
    );
    // A flag that the command does not take is refused with its own usage.
    assert_parse_error(
        &["check", "--pid", "5", "--quiet", "1s"],
        "'--quiet'",
        "check",
    );
    assert_parse_error(&["serve", "--pid", "5", "--json"], "'--json'", "serve");
}

#[test]
fn durations_say_what_is_wrong_with_them() {
    let me = std::process::id().to_string();
    assert_usage_error(
        &["wait", "--pid", &me, "--timeout", "-1s"],
        "a duration cannot be negative",
    );
    assert_usage_error(
        &["stop", "--pid", &me, "--quiet", "0s"],
        "give a positive duration, like 100ms",
    );
    assert_usage_error(&["wait", "--pid", &me, "--timeout", "1m30"], "1m30s");
}

#[test]
fn bare_drainwatch_shows_the_help_and_help_has_help() {
    let done = run_drainwatch(&[]);
    assert_eq!(done.code, 2, "{done:?}");
    assert!(
        done.stderr.contains("Usage: drainwatch <COMMAND>"),
        "{done:?}"
    );
    assert!(done.stderr.contains("stop"), "{done:?}");
    let done = run_drainwatch(&["help", "--help"]);
    assert_eq!(done.code, 0, "{done:?}");
    assert!(
        done.stdout.contains("Usage: drainwatch <COMMAND>"),
        "{done:?}"
    );
    let done = run_drainwatch(&["stop", "--help"]);
    assert_eq!(done.code, 0, "{done:?}");
    assert!(
        done.stdout.contains("Examples:\n  drainwatch stop"),
        "{done:?}"
    );
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

/// Every command that takes a target refuses pid 1, kernel threads (kthreadd is pid 2 on every
/// Linux; a kworker is its child) and drainwatch itself, before anything is attached.
#[test]
fn init_kernel_threads_and_drainwatch_itself_are_refused_by_every_command() {
    let kworker = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .is_some_and(|(_, r)| r.starts_with(" I 2 ") || r.starts_with(" S 2 "))
            })
        })
        .expect("a child of kthreadd");
    let kworker = kworker.to_string();
    for command in ["check", "watch", "wait", "stop", "audit", "serve"] {
        assert_usage_error(&[command, "--pid", "1"], "pid 1 is init");
        assert_usage_error(
            &[command, "--pid", "2"],
            "pid 2 (kthreadd) is a kernel thread",
        );
        assert_usage_error(&[command, "--pid", &kworker], "is a kernel thread");
        // `exec` makes drainwatch the shell: $$ is then drainwatch's own pid.
        let script = format!("exec {} {command} --pid $$", drainwatch_bin().display());
        let out = std::process::Command::new("sh")
            .args(["-c", &script])
            .output()
            .expect("sh runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{command}: {stderr}");
        assert!(
            stderr.contains("is drainwatch itself"),
            "{command}: {stderr}"
        );
        // Kernel threads by name too: a --comm that takes one in is refused.
        let mut args = vec![command, "--comm", "kthreadd"];
        if command == "serve" {
            args.extend(["--listen", "127.0.0.1:0"]);
        }
        assert_usage_error(&args, "kernel thread");
    }
}

/// A selector that matches nothing is an error, not a clean run: for wait, stop, watch and
/// check at once; for audit (where a process may still start under the name) at the end.
#[test]
fn selectors_that_match_nothing_are_refused() {
    for command in ["check", "watch", "wait", "stop"] {
        assert_usage_error(
            &[command, "--comm", "dw-no-such-srv"],
            "--comm dw-no-such-srv matched no process",
        );
        assert_usage_error(
            &[command, "--unit", "dw-no-such-unit.service"],
            "no systemd unit dw-no-such-unit.service",
        );
        assert_usage_error(
            &[command, "--cgroup", "/dw-no-such-cgroup"],
            "no cgroup `/dw-no-such-cgroup`",
        );
    }
    // A unit name without a suffix is a service, as with systemctl.
    assert_usage_error(
        &["stop", "--unit", "dw-no-such-unit"],
        "no systemd unit dw-no-such-unit.service",
    );
}

#[test]
fn an_audit_whose_name_never_matched_is_an_error() {
    require_root();
    let done = run_drainwatch(&["audit", "--comm", "dw-no-such-srv", "--duration", "300ms"]);
    assert_eq!(done.code, 2, "{done:?}");
    // It attached first (the name might have matched during the window): the last line
    // says why the run is an error.
    let last = done.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("drainwatch: --comm dw-no-such-srv matched no process"),
        "{done:?}"
    );
    assert!(
        done.stdout.is_empty(),
        "no report for a window that saw nothing: {done:?}"
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
    let me = std::process::id().to_string();
    assert_usage_error(
        &[
            "audit",
            "--pid",
            &me,
            "--report",
            "/nonexistent-dir/report.json",
        ],
        "cannot write report file /nonexistent-dir/report.json",
    );
    assert_usage_error(
        &[
            "audit",
            "--pid",
            &me,
            "--junit",
            "/nonexistent-dir/junit.xml",
        ],
        "cannot write junit file /nonexistent-dir/junit.xml",
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

/// `check` run by a user who cannot read the server's open files sees no connection: it
/// says so (exit 2) instead of "0 connections, a graceful stop is possible".
#[test]
fn check_without_the_privileges_to_see_says_so() {
    require_root();
    let server = Server::start(&[]);
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(drainwatch_bin())
        .args(["check", "--pid", &server.pid.to_string()])
        .output()
        .expect("setpriv (util-linux) runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot read the open files of dw-fixture ({})",
            server.pid
        )),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "no verdict about what it cannot see");
}

/// Runs drainwatch with a stdout whose reader is gone before it writes (`| head -n 1` that
/// has already read its line): every write fails with EPIPE.
fn run_with_closed_stdout(args: &[&str]) -> (i32, String) {
    let mut fds = [0; 2];
    // SAFETY: pipe(2) into a two-int array; both fds are owned below.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
    // SAFETY: fresh fds from pipe(2), owned once each.
    let (read, write) = unsafe {
        use std::os::fd::FromRawFd;
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    };
    drop(read);
    let out = std::process::Command::new(drainwatch_bin())
        .args(args)
        .stdout(std::process::Stdio::from(write))
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run drainwatch");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `drainwatch doctor | head -n 1`, `drainwatch man | head`, `check --json | jq` that quit:
/// a reader that is gone is not an error: no panic, no message, the exit code the command
/// has with a reader.
#[test]
fn a_closed_stdout_is_a_quiet_exit_with_the_commands_own_code() {
    require_root();
    let server = Server::start(&[]);
    let pid = server.pid.to_string();
    let commands: [&[&str]; 6] = [
        &["doctor"],
        &["doctor", "--json"],
        &["man"],
        &["completions", "bash"],
        &["check", "--pid", &pid],
        &["check", "--pid", &pid, "--json"],
    ];
    for args in commands {
        let with_reader = run_drainwatch(args);
        let (code, stderr) = run_with_closed_stdout(args);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(
            !stderr.to_lowercase().contains("broken pipe"),
            "{args:?}: {stderr}"
        );
        assert_eq!(code, with_reader.code, "{args:?}: {stderr}");
        assert_eq!(
            stderr.lines().collect::<Vec<_>>(),
            with_reader.stderr.lines().collect::<Vec<_>>(),
            "{args:?}: nothing more on stderr"
        );
    }
}
