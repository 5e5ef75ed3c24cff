//! CI audit mode: targets by name across a restart, policies, JUnit, Ctrl-C.

use std::{path::Path, process::Command};

use drainwatch_tests::*;

/// A restart that kills the old server with -9 and starts a new one, audited by name: the
/// SIGKILL is on the old process only, and the new one (not a child of anything audited:
/// `--no-follow`) is audited too. Then the same restart under a policy that lets the
/// script's SIGKILL through as a warning.
#[test]
fn a_restart_audited_by_name_flags_the_old_process_only() {
    const NAME: &str = "dw-restarted";
    require_root();
    for with_policy in [false, true] {
        let dir = TempDir::new("restart");
        // Found by a name of its own: the other tests of this binary run their dw-fixture
        // servers at the same time, and an audit by `--comm dw-fixture` took them in.
        let fixture = fixture_named(&dir, NAME);
        let fixture = fixture.to_str().unwrap();
        let (report_path, junit_path) = (dir.path("report.json"), dir.path("junit.xml"));
        let policy_path = dir.path("policy.toml");
        std::fs::write(&policy_path, "sigkill_allowed_senders = [\"sh\"]\n").unwrap();
        let old = Server::start_from(Path::new(fixture), &[]);
        let script = format!(
            "kill -9 {old}; {fixture} server > {dir}/new.txt & new=$!; \
             while ! grep -q ready {dir}/new.txt; do sleep 0.05; done; \
             kill -TERM $new; wait $new",
            old = old.pid,
            dir = dir.0.display()
        );
        let mut args = vec![
            "audit",
            "--comm",
            NAME,
            "--no-follow",
            "--report",
            &report_path,
            "--junit",
            &junit_path,
        ];
        if with_policy {
            args.extend(["--policy", &policy_path]);
        }
        args.extend(["--", "sh", "-c", &script]);
        let done = run_drainwatch(&args);
        let report = read_report(&report_path);
        let new_line = std::fs::read_to_string(dir.0.join("new.txt")).unwrap();
        let new_pid: u64 = new_line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("pid="))
            .and_then(|p| p.parse().ok())
            .expect("new server's pid");
        let targets = report["targets"].as_array().unwrap();
        let target = |pid: u64| targets.iter().find(|t| t["pid"] == pid);
        let old_t = target(old.pid as u64).expect("the old server is audited");
        assert_eq!(old_t["exit"]["signal"], "SIGKILL");
        let new_t =
            target(new_pid).unwrap_or_else(|| panic!("the new server is audited: {report:#}"));
        assert_eq!(new_t["comm"], NAME);
        assert_eq!(new_t["exit"]["code"], 0, "{report:#}");
        let all: Vec<&Value> = report["violations"]
            .as_array()
            .unwrap()
            .iter()
            .chain(report["warnings"].as_array().into_iter().flatten())
            .collect();
        assert_eq!(all.len(), 1, "{report:#}");
        assert_eq!(all[0]["kind"], "sigkill");
        assert_eq!(all[0]["pid"], old.pid, "on the old process only");
        assert_eq!(all[0]["sender_comm"], "sh");
        if with_policy {
            assert_eq!(report["verdict"], "clean", "{report:#}");
            assert_eq!(done.code, 0, "{done:?}");
            assert!(
                done.stdout
                    .contains(&format!("warning (policy): SIGKILL sent to {NAME}")),
                "{}",
                done.stdout
            );
        } else {
            assert_eq!(report["verdict"], "violations");
            assert_eq!(done.code, 1, "{done:?}");
        }

        // What CI systems read: one test case per name (the old and the new server
        // together, never a pid), none for the restart script `sh` (the harness).
        let junit = junit_parser::from_reader(std::io::BufReader::new(
            std::fs::File::open(&junit_path).unwrap(),
        ))
        .expect("valid JUnit XML");
        let suite = &junit.suites[0];
        let names: Vec<&str> = suite.cases.iter().map(|c| c.name.as_str()).collect();
        let case_name = format!("drainwatch.audit::{NAME}");
        assert_eq!(names, [case_name.as_str()]);
        assert!(
            suite.hostname.is_some() && suite.timestamp.is_some(),
            "{suite:?}"
        );
        let failed: Vec<&str> = suite
            .cases
            .iter()
            .filter(|c| c.status.is_failure())
            .map(|c| c.name.as_str())
            .collect();
        if with_policy {
            assert!(failed.is_empty(), "{failed:?}");
        } else {
            // junit-parser names a case "classname::name".
            assert_eq!(failed, [case_name.as_str()]);
            assert_eq!((suite.tests, suite.failures), (1, 1));
            let case = suite.cases.iter().find(|c| c.status.is_failure()).unwrap();
            let failure = case.status.failure_as_ref();
            assert_eq!(failure.failure_type, "sigkill");
            assert!(
                failure
                    .message
                    .starts_with(&format!("1 sigkill: SIGKILL sent to {NAME}")),
                "{}",
                failure.message
            );
        }
    }
}

/// Ctrl-C ends the audit with a partial report that is never `clean`: what the
/// interruption cut short was not seen (docs/design.md, "Command line"): `incomplete`, exit 1.
#[test]
fn ctrl_c_writes_a_partial_report() {
    require_root();
    let dir = TempDir::new("sigint");
    let report_path = dir.path("report.json");
    let mut sleeper = Command::new("sleep").arg("60").spawn().unwrap();
    let pid = sleeper.id().to_string();
    let audit = Drainwatch::attach(&["audit", "--pid", &pid, "--report", &report_path]);
    audit.signal(libc::SIGINT);
    let done = audit.finish();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_eq!(done.code, 1, "interrupted is never clean: {done:?}");
    assert!(
        done.stdout.contains("INCOMPLETE") && done.stdout.contains("interrupted (partial report"),
        "{}",
        done.stdout
    );
    let report = read_report(&report_path);
    assert_eq!(report["verdict"], "incomplete");
    assert_eq!(report["targets"][0]["exit"], Value::Null, "still running");
}

/// A CI runner's timeout sends SIGTERM to `audit -- ./release.sh`: the report and the JUnit
/// file say `incomplete` (a failing case), exit 1, and the release script and what it started
/// are not left running behind it: they get SIGTERM, followed to their exit in the report.
#[test]
fn sigterm_to_an_audit_stops_the_launched_command_and_fails() {
    require_root();
    let dir = TempDir::new("sigterm");
    let (report_path, junit_path) = (dir.path("report.json"), dir.path("junit.xml"));
    let child_pid = dir.path("child.pid");
    let script = format!("sleep 60 & echo $! > {child_pid}; wait");
    let mut audit = Drainwatch::attach(&[
        "audit",
        "--report",
        &report_path,
        "--junit",
        &junit_path,
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let sleep_pid: i32 = loop {
        if let Some(pid) = std::fs::read_to_string(&child_pid)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            break pid;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the script did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(audit.is_running());
    let sent = std::time::Instant::now();
    audit.signal(libc::SIGTERM);
    let done = audit.finish();
    assert_eq!(done.code, 1, "{done:?}");
    assert!(
        sent.elapsed() < std::time::Duration::from_secs(5),
        "the launched command ends at its SIGTERM, no grace waited out: {:?}",
        sent.elapsed()
    );
    assert!(
        done.stderr
            .contains("interrupted: sending SIGTERM to the launched command"),
        "{}",
        done.stderr
    );
    // SAFETY: kill(2) with signal 0 only asks whether the pid exists.
    let alive = unsafe { libc::kill(sleep_pid, 0) } == 0
        && !std::fs::read_to_string(format!("/proc/{sleep_pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ");
    assert!(!alive, "the script's sleep ({sleep_pid}) was left running");
    let report = read_report(&report_path);
    assert_eq!(report["verdict"], "incomplete", "{report:#}");
    for target in report["targets"].as_array().unwrap() {
        assert_eq!(
            target["exit"]["signal"], "SIGTERM",
            "each ended by the SIGTERM: {report:#}"
        );
    }
    let junit = std::fs::read_to_string(&junit_path).unwrap();
    assert!(
        junit.contains("failures=\"1\"") && junit.contains("type=\"incomplete\""),
        "{junit}"
    );
}

#[test]
fn bad_policies_and_names_are_usage_errors() {
    let dir = TempDir::new("policy");
    let policy = dir.path("p.toml");
    std::fs::write(&policy, "warn = [\"sigkil\"]\n").unwrap();
    let done = run_drainwatch(&["audit", "--comm", "x", "--policy", &policy]);
    assert_eq!(done.code, 2, "{done:?}");
    assert!(
        done.stderr.contains("unknown violation kind `sigkil`"),
        "{}",
        done.stderr
    );
    let done = run_drainwatch(&["audit", "--comm", "a-name-longer-than-15"]);
    assert_eq!(done.code, 2, "{done:?}");
    assert!(done.stderr.contains("1 to 15 bytes"), "{}", done.stderr);
}

/// A policy may name every kind of the contract (request_dropped, transaction_rolled_back
/// and operation_cut were refused), and a name that matches nothing is said as such when
/// attached ("attached to ;" before) and fails at the end with one line.
#[test]
fn every_kind_is_a_policy_word_and_an_unmatched_name_is_said_plainly() {
    require_root();
    let dir = TempDir::new("policy-kinds");
    let policy = dir.path("p.toml");
    std::fs::write(
        &policy,
        "warn = [\"request_dropped\", \"transaction_rolled_back\", \"operation_cut\"]\n",
    )
    .unwrap();
    let done = run_drainwatch(&[
        "audit",
        "--comm",
        "dw-nosuch",
        "--policy",
        &policy,
        "--duration",
        "300ms",
    ]);
    assert_eq!(done.code, 2, "{done:?}");
    assert!(!done.stderr.contains("attached to ;"), "{}", done.stderr);
    assert!(
        done.stderr
            .contains("attached to nothing yet (--comm dw-nosuch matched no process so far)"),
        "{}",
        done.stderr
    );
    let last = done.stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("--comm dw-nosuch matched no process"),
        "{}",
        done.stderr
    );
}

/// `audit -- CMD` follows what the command signals (docs/design.md, "Command line"): the
/// release script's process that sent the signal, from the report's launched target.
fn launched_pid(report: &Value) -> u64 {
    report["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["comm"] == "sh" && t.get("parent_pid").is_none())
        .and_then(|t| t["pid"].as_u64())
        .unwrap_or_else(|| panic!("the launched sh is a target: {report:#}"))
}

fn target(report: &Value, pid: u32) -> &Value {
    report["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["pid"] == pid)
        .unwrap_or_else(|| panic!("{pid} is a target: {report:#}"))
}

/// CI's own use: a release script that kill -9s a server it was never told about. The
/// server becomes a target at the signal, and the SIGKILL is a violation naming the script
/// as its sender and the server as its receiver: exit 1.
#[test]
fn a_release_script_that_kill_dash_nines_a_server_it_never_named_is_a_violation() {
    require_root();
    let dir = TempDir::new("follow-kill9");
    let report_path = dir.path("report.json");
    let mut server = Server::start(&[]);
    let script = format!("kill -9 {}", server.pid);
    let done = run_drainwatch(&["audit", "--report", &report_path, "--", "sh", "-c", &script]);
    assert!(!server.wait().success());
    assert_eq!(done.code, 1, "a violation exits 1: {done:?}");
    let report = read_report(&report_path);
    assert_eq!(report["verdict"], "violations", "{report:#}");
    let script_pid = launched_pid(&report);
    let kills = violations(&report, "sigkill");
    assert_eq!(kills.len(), 1, "{report:#}");
    assert_eq!(kills[0]["pid"], server.pid, "the receiver: {report:#}");
    assert_eq!(
        kills[0]["sender_tgid"], script_pid,
        "the sender: {report:#}"
    );
    assert_eq!(kills[0]["sender_comm"], "sh");
    let followed = target(&report, server.pid);
    assert_eq!(followed["comm"], "dw-fixture", "{report:#}");
    assert_eq!(followed["exit"]["signal"], "SIGKILL", "{report:#}");
    assert_eq!(followed["signalled_by"]["pid"], script_pid, "{report:#}");
    assert_eq!(followed["signalled_by"]["signal"], "SIGKILL", "{report:#}");
    assert!(
        done.stderr.contains(&format!(
            "followed: pid {} (dw-fixture) signalled by sh",
            server.pid
        )),
        "{}",
        done.stderr
    );
    assert!(
        done.stdout.contains(&format!(
            "SIGKILL sent to dw-fixture ({}) by sh ({script_pid})",
            server.pid
        )),
        "{}",
        done.stdout
    );
}

/// A pre-fork server with a request in flight in its worker, which the script tells to end
/// (SIGTERM) and which stops gracefully: followed from the signal with its worker and its
/// connection (surveyed like an attached pid), the audit waits for its exit, and it is clean.
#[test]
fn a_server_the_script_sigterms_is_followed_to_its_graceful_exit() {
    require_root();
    let dir = TempDir::new("follow-term");
    let report_path = dir.path("report.json");
    let gate = drainwatch_tests::game::Gate::new(&dir, "echo");
    let gate_path = gate.path().to_string_lossy().into_owned();
    let mut server = Server::start(&["--workers", "1", "--gate", &gate_path]);
    let worker = server.workers[0];
    let mut client = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    std::io::Write::write_all(&mut client, b"ping\n").unwrap();
    until_read(server.port);
    let script = format!("kill -TERM {}", server.pid);
    let mut audit =
        Drainwatch::spawn(&["audit", "--report", &report_path, "--", "sh", "-c", &script]);
    audit.wait_for_stderr(&format!(
        "followed: pid {} (dw-fixture) signalled by sh",
        server.pid
    ));
    assert!(
        audit.is_running(),
        "the audit waits for the server it told to end"
    );
    gate.open();
    let mut echo = [0u8; 5];
    std::io::Read::read_exact(&mut client, &mut echo).expect("the worker answers");
    assert!(server.wait().success());
    let done = audit.finish();
    assert_eq!(done.code, 0, "{done:?}");
    let report = read_report(&report_path);
    assert_eq!(report["verdict"], "clean", "{report:#}");
    let script_pid = launched_pid(&report);
    let master = target(&report, server.pid);
    assert_eq!(master["signalled_by"]["pid"], script_pid, "{report:#}");
    assert_eq!(master["signalled_by"]["signal"], "SIGTERM", "{report:#}");
    assert_eq!(
        master["exit"]["code"], 0,
        "followed to its exit: {report:#}"
    );
    let worker_t = target(&report, worker);
    assert_eq!(worker_t["parent_pid"], server.pid, "{report:#}");
    assert_eq!(worker_t["exit"]["code"], 0, "{report:#}");
    assert_eq!(report["connections"]["client_closed"], 1, "{report:#}");
    assert!(
        done.stdout.contains("(followed: signalled SIGTERM by sh"),
        "{}",
        done.stdout
    );
}

/// The followed server's connections are watched from the signal: its worker, SIGKILLed by
/// the script with a request it had taken before the signal, cut that request.
#[test]
fn a_followed_servers_request_in_flight_is_seen_when_the_script_kills_its_worker() {
    require_root();
    let dir = TempDir::new("follow-inflight");
    let report_path = dir.path("report.json");
    let gate = drainwatch_tests::game::Gate::new(&dir, "never");
    let gate_path = gate.path().to_string_lossy().into_owned();
    let go = dir.path("go");
    let mut server = Server::start(&["--workers", "1", "--gate", &gate_path]);
    let worker = server.workers[0];
    let mut client = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    std::io::Write::write_all(&mut client, b"ping\n").unwrap();
    until_read(server.port);
    let script = format!(
        "kill -TERM {}; while [ ! -e {go} ]; do sleep 0.01; done; kill -9 {worker}",
        server.pid
    );
    let mut audit =
        Drainwatch::spawn(&["audit", "--report", &report_path, "--", "sh", "-c", &script]);
    audit.wait_for_stderr(&format!("followed: pid {}", server.pid));
    std::fs::write(&go, b"").unwrap();
    server.wait();
    let done = audit.finish();
    drop(client);
    assert_eq!(done.code, 1, "{done:?}");
    let report = read_report(&report_path);
    assert_eq!(report["verdict"], "violations", "{report:#}");
    let kills = violations(&report, "sigkill");
    assert_eq!(kills.len(), 1, "{report:#}");
    assert_eq!(kills[0]["pid"], worker, "{report:#}");
    let cut = violations(&report, "inflight_at_exit");
    assert_eq!(cut.len(), 1, "{report:#}");
    assert_eq!(cut[0]["pid"], worker, "{report:#}");
    assert_eq!(cut[0]["requests"], 1, "{report:#}");
}

/// `kill -0` is a liveness check, not a signal: the server it asks about is no target and
/// nothing is a violation.
#[test]
fn kill_dash_zero_follows_nothing() {
    require_root();
    let dir = TempDir::new("follow-kill0");
    let report_path = dir.path("report.json");
    let server = Server::start(&[]);
    let script = format!("kill -0 {}", server.pid);
    let done = run_drainwatch(&["audit", "--report", &report_path, "--", "sh", "-c", &script]);
    assert_eq!(done.code, 0, "{done:?}");
    let report = read_report(&report_path);
    assert_eq!(report["verdict"], "clean", "{report:#}");
    let targets = report["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 1, "only the script: {report:#}");
    assert!(!done.stderr.contains("followed:"), "{}", done.stderr);
    assert!(
        std::path::Path::new(&format!("/proc/{}", server.pid)).exists(),
        "the server still runs"
    );
}
