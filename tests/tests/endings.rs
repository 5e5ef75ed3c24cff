//! How runs end (issue 13): `audit -- CMD` follows the shutdown CMD caused to the end, a
//! target seen dying always has its exit recorded, and Ctrl-C on `wait`/`stop` is
//! `incomplete`, never `clean`. Real probes, the real event-loop fixture.

use std::time::{Duration, Instant};

use drainwatch_tests::*;

fn last_report(stdout: &str) -> Value {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.contains("drainwatch.report/v1"))
        .unwrap_or_else(|| panic!("no report in {stdout}"));
    serde_json::from_str(line).unwrap()
}

/// Polls until the fixture server has read the request (its socket holds nothing unread).
fn until_read(server: &EventLoopServer) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let port = format!("sport = :{}", server.port);
    loop {
        let ss = std::process::Command::new("ss")
            .args(["-tnH", "state", "established", &port])
            .output()
            .expect("ss runs");
        let text = String::from_utf8_lossy(&ss.stdout).to_string();
        if !text.trim().is_empty() && text.split_whitespace().next() == Some("0") {
            return;
        }
        assert!(Instant::now() < deadline, "request not read: {text}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn audit_of_kill_term_follows_the_shutdown_it_caused_and_flags_the_cut_request() {
    require_root();
    // On SIGTERM it exits a second later, answering nothing.
    let server = EventLoopServer::start(&["--term-exit-after-ms", "1000"]);
    let _in_flight = server.request("slow", scaled_ms(10_000));
    until_read(&server);
    let pid = server.pid.to_string();
    let started = Instant::now();
    // -v: the evidence each connection was judged on, in a failure message.
    let done = run_drainwatch(&[
        "audit", "--pid", &pid, "--json", "-v", "--", "kill", "-TERM", &pid,
    ]);
    let took = started.elapsed();
    assert_eq!(done.code, 1, "{done:?}");
    let report = last_report(&done.stdout);
    assert_eq!(report["verdict"], "violations", "{report:#}");
    let cut = violations(&report, "inflight_at_exit");
    assert_eq!(cut.len(), 1, "{report:#}");
    assert_eq!(cut[0]["requests"], 1, "{report:#}");
    let target = report["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["pid"] == server.pid)
        .expect("the server is a target");
    let exit = &target["exit"];
    assert!(exit.is_object(), "its exit is recorded: {report:#}");
    assert_eq!(exit["code"], 0, "{report:#}");
    assert!(
        exit["at_ms"].as_u64().unwrap() >= 900,
        "it exited about a second after the signal: {report:#}"
    );
    assert!(took >= Duration::from_millis(900), "ended after {took:?}");
}

#[test]
fn audit_of_kill_dash_nine_records_the_exit_it_caused() {
    require_root();
    let server = EventLoopServer::start(&[]);
    let pid = server.pid.to_string();
    let done = run_drainwatch(&[
        "audit", "--pid", &pid, "--json", "--", "kill", "-KILL", &pid,
    ]);
    assert_eq!(done.code, 1, "{done:?}");
    let report = last_report(&done.stdout);
    assert_eq!(violations(&report, "sigkill").len(), 1, "{report:#}");
    let target = report["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["pid"] == server.pid)
        .expect("the server is a target");
    assert_eq!(target["exit"]["signal"], "SIGKILL", "{report:#}");
}

#[test]
fn ctrl_c_on_wait_is_incomplete_never_clean() {
    require_root();
    let server = EventLoopServer::start(&[]);
    let _in_flight = server.request("slow", scaled_ms(10_000));
    until_read(&server);
    let pid = server.pid.to_string();
    let wait = Drainwatch::attach(&["wait", "--pid", &pid, "--json", "--timeout", "30s"]);
    std::thread::sleep(Duration::from_millis(200));
    wait.signal(libc::SIGINT);
    let done = wait.finish();
    assert_eq!(done.code, 1, "{done:?}");
    let report = last_report(&done.stdout);
    assert_eq!(report["verdict"], "incomplete", "{report:#}");
    assert_eq!(report["mode"], "wait");
}

#[test]
fn ctrl_c_on_stop_is_incomplete_never_clean() {
    require_root();
    // A shutdown that would take long: drainwatch is interrupted before it ends.
    let server = EventLoopServer::start(&["--term-exit-after-ms", &scaled_ms(20_000).to_string()]);
    let pid = server.pid.to_string();
    let stop = Drainwatch::attach(&["stop", "--pid", &pid, "--json", "--timeout", "30s"]);
    std::thread::sleep(Duration::from_millis(300));
    stop.signal(libc::SIGINT);
    let done = stop.finish();
    assert_eq!(done.code, 1, "{done:?}");
    let report = last_report(&done.stdout);
    assert_eq!(report["verdict"], "incomplete", "{report:#}");
    assert_eq!(report["mode"], "stop");
}
