//! `drainwatch audit` with real probes against real processes.

use drainwatch_tests::*;

#[test]
fn kill_dash_nine_from_a_helper_is_exactly_one_sigkill_naming_the_sender() {
    require_root();
    let dir = TempDir::new("kill9");
    let report_path = dir.path("report.json");
    let mut server = Server::start(&[]);
    let pid = server.pid.to_string();
    let audit = Drainwatch::attach(&["audit", "--pid", &pid, "--report", &report_path]);
    let helper = signal_from_helper(libc::SIGKILL, server.pid);
    server.wait();
    let done = audit.finish();
    assert_eq!(done.code, 1, "violations exit 1: {done:?}");
    let report = read_report(&report_path);
    assert_eq!(report["schema"], "drainwatch.report/v1");
    assert_eq!(report["mode"], "audit");
    assert_eq!(report["verdict"], "violations");
    let kills = violations(&report, "sigkill");
    assert_eq!(kills.len(), 1, "{report:#}");
    let kill = kills[0];
    assert_eq!(kill["pid"], server.pid);
    assert_eq!(kill["sender_tgid"], helper);
    assert_eq!(kill["sender_pid"], helper);
    assert_eq!(kill["sender_comm"], "dw-fixture");
    let cmdline = kill["sender_cmdline"]
        .as_str()
        .expect("helper lingers: cmdline read");
    assert!(cmdline.contains(&format!("signal 9 {pid}")), "{cmdline}");
    assert_eq!(kill["by_kernel"], false);
    assert_eq!(kill["by_drainwatch"], false);
    assert!(kill["at_ms"].as_u64().is_some());
    let exit = &report["targets"][0]["exit"];
    assert_eq!(exit["signal"], "SIGKILL", "{report:#}");
    assert_eq!(exit["code"], Value::Null);
    assert_eq!(report["events"]["lost"], 0);
    assert!(
        done.stdout.contains("SIGKILL sent to dw-fixture"),
        "{}",
        done.stdout
    );
}

#[test]
fn sigterm_only_is_clean() {
    require_root();
    let dir = TempDir::new("term");
    let report_path = dir.path("report.json");
    let mut server = Server::start(&[]);
    let pid = server.pid.to_string();
    let audit = Drainwatch::attach(&["audit", "--pid", &pid, "--report", &report_path]);
    signal_from_helper(libc::SIGTERM, server.pid);
    assert!(server.wait().success());
    let done = audit.finish();
    assert_eq!(done.code, 0, "{done:?}");
    let report = read_report(&report_path);
    assert_eq!(report["verdict"], "clean", "{report:#}");
    assert_eq!(report["violations"].as_array().unwrap().len(), 0);
    let exit = &report["targets"][0]["exit"];
    assert_eq!(
        exit["code"], 0,
        "exit code read from the kernel: {report:#}"
    );
    assert_eq!(exit["signal"], Value::Null);
    // What ran is what the report says (docs/hooks.md).
    assert_eq!(report["coverage"]["hooks"], hooks(), "{report:#}");
    assert!(
        report["coverage"]["kernel"]
            .as_str()
            .is_some_and(|k| !k.is_empty()),
        "{report:#}"
    );
}

#[test]
fn a_forked_child_killed_with_sigkill_is_flagged_with_the_childs_pid() {
    require_root();
    let dir = TempDir::new("fork");
    let report_path = dir.path("report.json");
    // The parent is launched under audit, so its child is forked after attach.
    let fixture = fixture_bin();
    let fixture = fixture.to_str().unwrap();
    let mut audit = Drainwatch::spawn(&[
        "audit",
        "--report",
        &report_path,
        "--duration",
        "20s",
        "--",
        fixture,
        "server",
        "--fork-child",
    ]);
    audit.wait_for_stderr("attached");
    // The launched server's pid is the audit's only named target; its child is found by
    // reading /proc for a child of it.
    let parent = wait_for_child_of(audit.pid(), "dw-fixture");
    let child = wait_for_child_of(parent, "dw-fixture");
    let helper = signal_from_helper(libc::SIGKILL, child);
    signal_from_helper(libc::SIGTERM, parent);
    let done = audit.finish();
    assert_eq!(done.code, 1, "{done:?}");
    let report = read_report(&report_path);
    let kills = violations(&report, "sigkill");
    assert_eq!(kills.len(), 1, "{report:#}");
    assert_eq!(kills[0]["pid"], child);
    assert_eq!(kills[0]["sender_tgid"], helper);
    let targets = report["targets"].as_array().unwrap();
    let child_target = targets
        .iter()
        .find(|t| t["pid"] == child)
        .expect("child is a target");
    assert_eq!(child_target["parent_pid"], parent);
    assert_eq!(child_target["exit"]["signal"], "SIGKILL");
    let parent_target = targets
        .iter()
        .find(|t| t["pid"] == parent)
        .expect("parent is a target");
    assert_eq!(parent_target["exit"]["code"], 0);
}

/// Polls /proc for a child process of `parent` with the given comm.
fn wait_for_child_of(parent: u32, comm: &str) -> u32 {
    let deadline = std::time::Instant::now() + PATIENCE;
    while std::time::Instant::now() < deadline {
        let children = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
            .unwrap_or_default();
        for pid in children
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
        {
            let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if name.trim() == comm {
                return pid;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("no child {comm} of {parent} appeared");
}

#[test]
fn a_launched_command_that_exits_0_is_clean_and_its_code_is_reported() {
    require_root();
    let dir = TempDir::new("launch");
    let report_path = dir.path("report.json");
    let fixture = fixture_bin();
    let done = run_drainwatch(&[
        "audit",
        "--report",
        &report_path,
        "--",
        fixture.to_str().unwrap(),
        "exit",
        "0",
        "--after-ms",
        "50",
    ]);
    assert_eq!(done.code, 0, "{done:?}");
    let report = read_report(&report_path);
    assert_eq!(report["verdict"], "clean", "{report:#}");
    assert_eq!(report["targets"][0]["comm"], "dw-fixture");
    assert_eq!(report["targets"][0]["exit"]["code"], 0);

    let done = run_drainwatch(&[
        "audit",
        "--json",
        "--",
        fixture.to_str().unwrap(),
        "exit",
        "3",
    ]);
    assert_eq!(done.code, 0, "a non-zero exit is not a violation: {done:?}");
    let report: Value = serde_json::from_str(done.stdout.trim()).expect("--json prints the report");
    assert_eq!(report["targets"][0]["exit"]["code"], 3, "{report:#}");
}

/// The kernels differ in how a whole process's exit is seen (6.1 and 6.12 have no
/// `group_dead` in sched_process_exit): the main thread leaving first must not count as
/// the exit, and the code is the one the last thread exits with.
#[test]
fn a_multithreaded_target_exits_when_its_last_thread_does() {
    require_root();
    let fixture = fixture_bin();
    let done = run_drainwatch(&[
        "audit",
        "--json",
        "--",
        fixture.to_str().unwrap(),
        "exit",
        "5",
        "--after-ms",
        "400",
        "--main-thread-first",
    ]);
    assert_eq!(done.code, 0, "{done:?}");
    let report: Value = serde_json::from_str(done.stdout.trim()).expect("--json prints the report");
    let targets = report["targets"].as_array().expect("targets");
    assert_eq!(
        targets.len(),
        1,
        "threads are not targets of their own: {report:#}"
    );
    let exit = &targets[0]["exit"];
    assert_eq!(exit["code"], 5, "the last thread's exit code: {report:#}");
    let at = exit["at_ms"].as_u64().expect("exit time");
    assert!(
        at >= 350,
        "exit seen when the main thread left, not the last: {report:#}"
    );
}

#[test]
fn a_launched_command_that_cannot_start_is_a_usage_error() {
    require_root();
    let done = run_drainwatch(&["audit", "--", "/nonexistent/drainwatch-test-binary"]);
    assert_eq!(done.code, 2, "{done:?}");
    assert_eq!(
        done.stderr.lines().count(),
        1,
        "one clear line: {}",
        done.stderr
    );
    assert!(
        done.stderr.starts_with("drainwatch: could not launch"),
        "{}",
        done.stderr
    );
}
