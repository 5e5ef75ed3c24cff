//! check, wait and stop against the fixture game server on real PostgreSQL, compared with
//! the fixture's own timestamps (CLOCK_MONOTONIC, the clock of the kernel's events).

use drainwatch_tests::{
    db::PgServer,
    game::{mono_ns, GameServer, Gate},
    *,
};

const QUIET_MS: u64 = 100;

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

#[test]
fn stop_with_a_handler_waits_for_the_request_and_is_clean() {
    require_root();
    let db = PgServer::start();
    let dir = TempDir::new("stop-clean");
    let report_path = dir.path("report.json");
    let mut game = GameServer::start(&db, &["--pool", "2", "--on-term", "graceful"]);
    let gate = Gate::new(&dir, "checkout");
    let pending = game.send_gated_request("checkout", &gate);
    game.wait_truth("in flight", |t| t.requests_in_flight == 1);
    let pid = game.pid.to_string();
    let mut stop = Drainwatch::spawn(&["stop", "--pid", &pid, "--report", &report_path, "--json"]);
    stop.wait_for_stderr("sending SIGTERM");
    let signalled = mono_ns();
    // The request goes on for a while after the signal (the scenario, not a wait for a
    // condition): the drain must last until it ends, however long attaching took.
    std::thread::sleep(std::time::Duration::from_millis(300));
    gate.open();
    assert!(pending.reply().starts_with("done"), "the request completes");
    assert!(game.wait().success());
    let done = stop.finish();
    assert_eq!(done.code, 0, "{done:?}");
    let report = read_report(&report_path);
    assert_eq!(report["verdict"], "clean", "{report:#}");
    let truth = game.truth();
    let remaining = ms(truth.last_completion_mono_ns.saturating_sub(signalled));
    let drain = &report["drain"];
    assert_eq!(drain["signal"], "SIGTERM");
    let drain_ms = drain["drain_ms"].as_f64().unwrap();
    // The signal went out just before the line was read: allow a few ms of reading lag.
    assert!(
        drain_ms + 5.0 >= remaining,
        "drained before the request ended: {drain_ms} < {remaining}: {drain}"
    );
    let slack = scaled_ms(50) as f64;
    assert!(
        drain_ms <= remaining + QUIET_MS as f64 + slack,
        "drain verdict late: {drain_ms} > {remaining} + quiet + {slack}: {drain}"
    );
    assert!(
        remaining > 0.0,
        "the request was still in flight at the signal: {drain}"
    );
    assert!(drain["exited_at_ms"].as_u64().is_some());
}

#[test]
fn without_a_handler_check_says_no_and_stop_reports_what_was_cut() {
    require_root();
    let db = PgServer::start();
    let dir = TempDir::new("stop-cut");
    let report_path = dir.path("report.json");
    let mut game = GameServer::start(&db, &["--pool", "1", "--on-term", "default"]);
    let pid = game.pid.to_string();
    let check = run_drainwatch(&["check", "--pid", &pid]);
    assert_eq!(check.code, 1, "{check:?}");
    assert!(
        check.stdout.contains("no SIGTERM handler"),
        "{}",
        check.stdout
    );
    assert!(check.stdout.contains("1 database"), "{}", check.stdout);
    // Long enough to be in flight once stop has attached, at any machine speed (a guest
    // under TCG takes seconds to load the probe): it is cut by the SIGTERM, not awaited.
    let pending = game.send_request("cut", scaled_ms(5_000));
    game.wait_truth("inside the transaction", |t| t.transactions_open == 1);
    let done = run_drainwatch(&["stop", "--pid", &pid, "--report", &report_path]);
    drop(pending);
    game.wait();
    assert_eq!(done.code, 1, "{done:?}");
    let report = read_report(&report_path);
    assert_eq!(report["verdict"], "violations", "{report:#}");
    // No terminal: stdout is the report alone, and stderr lists the violations it announces.
    assert_eq!(done.stdout.lines().count(), 1, "{}", done.stdout);
    let printed: Value = serde_json::from_str(&done.stdout).unwrap();
    assert_eq!(printed["verdict"], "violations");
    let below: Vec<&str> = done
        .stderr
        .lines()
        .skip_while(|l| !l.contains("stopped, with violations (listed below)"))
        .skip(1)
        .collect();
    assert!(
        below.iter().any(|l| l.starts_with("drainwatch:   x ")),
        "nothing listed below the headline: {}",
        done.stderr
    );
    // The transaction began before drainwatch attached: its state was never reported by the
    // database while watched, so it is not claimed (never guessed). What is known: the
    // request was in flight and the kernel had to close the database connection.
    let cut = violations(&report, "inflight_at_exit");
    assert_eq!(cut.len(), 1, "{report:#}");
    assert_eq!(cut[0]["requests"], 1);
    let leak = violations(&report, "leaked_db_connection");
    assert_eq!(leak.len(), 1, "{report:#}");
    assert_eq!(leak[0]["closed_by"], "exit");
    assert!(
        violations(&report, "sigkill").is_empty(),
        "SIGTERM is not SIGKILL"
    );
    assert_eq!(report["targets"][0]["exit"]["signal"], "SIGTERM");
}

#[test]
fn a_server_that_never_exits_times_out_without_sigkill_unless_asked() {
    require_root();
    let db = PgServer::start();
    let mut game = GameServer::start(&db, &["--pool", "1", "--on-term", "ignore"]);
    let pid = game.pid.to_string();
    let check = run_drainwatch(&["check", "--pid", &pid]);
    assert_eq!(check.code, 1, "{check:?}");
    assert!(check.stdout.contains("ignores SIGTERM"), "{}", check.stdout);

    let done = run_drainwatch(&["stop", "--pid", &pid, "--timeout", "1s", "--json"]);
    assert_eq!(done.code, 4, "{done:?}");
    let report: Value = serde_json::from_str(done.stdout.lines().last().unwrap()).unwrap();
    assert_eq!(report["verdict"], "timeout", "{report:#}");
    assert!(violations(&report, "sigkill").is_empty());
    assert!(
        game.child.try_wait().unwrap().is_none(),
        "no SIGKILL without --kill-after"
    );
    assert_eq!(game.ping(), "pong", "still serving");

    let dir = TempDir::new("kill-after");
    let report_path = dir.path("report.json");
    let done = run_drainwatch(&[
        "stop",
        "--pid",
        &pid,
        "--timeout",
        "500ms",
        "--kill-after",
        "--report",
        &report_path,
    ]);
    assert_eq!(done.code, 1, "{done:?}");
    game.wait();
    let report = read_report(&report_path);
    let kills = violations(&report, "sigkill");
    assert_eq!(kills.len(), 1, "{report:#}");
    assert_eq!(kills[0]["by_drainwatch"], true);
    assert_eq!(report["targets"][0]["exit"]["signal"], "SIGKILL");
}

#[test]
fn wait_returns_after_the_last_request_completes_never_before() {
    require_root();
    let db = PgServer::start();
    let game = GameServer::start(&db, &["--pool", "2"]);
    let pid = game.pid.to_string();
    let dir = TempDir::new("wait-after");
    // Each request is in flight when `wait` attaches and ends a while after: its start was
    // never seen, and wait must still not return before its end.
    for round in 0..2 {
        let gate = Gate::new(&dir, &format!("w{round}"));
        let pending = game.send_gated_request(&format!("w{round}"), &gate);
        game.wait_truth("in flight", |t| t.requests_in_flight == 1);
        // "Returned" is when the verdict line is out: the process then takes the probe down
        // (about a second of kernel RCU waits) before it exits.
        let timeout = format!("{}ms", scaled_ms(30_000));
        let mut wait = Drainwatch::spawn(&["wait", "--pid", &pid, "--json", "--timeout", &timeout]);
        let lines = wait.stdout_lines();
        wait.wait_for_stderr("attached to");
        std::thread::sleep(std::time::Duration::from_millis(300 + 200 * round));
        gate.open();
        let verdict_line = lines
            .iter()
            .find(|l| l.contains("drainwatch.report/v1"))
            .expect("wait prints its report");
        let returned = mono_ns();
        let done = wait.finish();
        assert_eq!(done.code, 0, "{done:?}");
        assert!(pending.reply().starts_with("done"));
        let completed = game.truth().last_completion_mono_ns;
        assert!(
            returned >= completed,
            "wait returned {:.1}ms before the request completed",
            ms(completed - returned)
        );
        let late = ms(returned - completed);
        // Precision is measured by `cargo xtask bench` on a quiet machine; under a loaded
        // test run this only bounds it.
        assert!(
            late <= (QUIET_MS + scaled_ms(500)) as f64,
            "wait returned {late:.1}ms after completion"
        );
        let report: Value = serde_json::from_str(&verdict_line).unwrap();
        assert_eq!(report["mode"], "wait");
        assert!(
            report["drain"]["drained_at_ms"].as_u64().is_some(),
            "{report:#}"
        );
    }
}

/// An event loop (Python asyncio) with a request in flight when `wait` attaches: its only
/// thread waits in epoll_wait, exactly as when it is idle. wait must not call it drained
/// before the reply; an idle event loop whose last request was answered drains at once.
#[test]
fn an_event_loop_server_with_a_request_in_flight_is_not_drained_early() {
    use std::io::{BufRead, BufReader, Write};
    require_root();
    let server = EventLoopServer::start(&[]);
    let (port, pid) = (server.port, server.pid.to_string());
    let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut replies = BufReader::new(client.try_clone().unwrap());
    // An answered request, long enough ago that the answer is in a later kernel tick.
    client.write_all(b"op warm 20\n").unwrap();
    let mut line = String::new();
    replies.read_line(&mut line).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let idle = run_drainwatch(&["wait", "--pid", &pid, "--json", "--timeout", "10s"]);
    assert_eq!(idle.code, 0, "an answered event loop is drained: {idle:?}");

    client.write_all(b"op slow 1500\n").unwrap();
    // The reply's arrival, stamped by a thread of its own.
    let reply = std::thread::spawn(move || {
        let mut line = String::new();
        replies.read_line(&mut line).unwrap();
        (line, mono_ns())
    });
    std::thread::sleep(std::time::Duration::from_millis(50));
    let mut wait = Drainwatch::spawn(&["wait", "--pid", &pid, "--json"]);
    let lines = wait.stdout_lines();
    let verdict = lines.iter().find(|l| l.contains("drainwatch.report/v1"));
    let verdict_at = mono_ns();
    assert!(verdict.is_some(), "wait printed its report");
    let (line, replied_at) = reply.join().unwrap();
    assert_eq!(line.trim(), "done");
    let done = wait.finish();
    assert_eq!(done.code, 0, "{done:?}");
    assert!(
        verdict_at >= replied_at,
        "drained {:.1} ms before the reply",
        ms(replied_at - verdict_at)
    );
}

/// `wait --json | jq -r .verdict`: stdout holds the report alone, one JSON object, however
/// long the wait (progress lines went there too and read as `null` verdicts); the progress
/// goes to stderr.
#[test]
fn a_json_reader_of_wait_gets_the_report_alone() {
    require_root();
    let mut sleeper = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let pid = sleeper.id().to_string();
    let done = run_drainwatch(&["wait", "--pid", &pid, "--json", "--quiet", "1500ms"]);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_eq!(done.code, 0, "{done:?}");
    assert_eq!(done.stdout.lines().count(), 1, "{}", done.stdout);
    let report: Value = serde_json::from_str(&done.stdout).unwrap();
    assert_eq!(report["schema"], "drainwatch.report/v1");
    assert_eq!(report["verdict"], "clean");
    assert!(
        done.stderr.contains("drainwatch: waiting: 0 requests"),
        "progress on stderr: {}",
        done.stderr
    );
}

/// A server that answers a client which already reset the link, and keeps the dead link
/// open (as a game server keeps a gateway link until its own loop notices): its failed send
/// is the answer begun, so the request ends there (docs/design.md, "request in flight":
/// until the server next sends) on every backend. The socket tracepoints once ended nothing
/// on a failed send, and `wait` held with "1 request in flight" that nobody could answer.
#[test]
fn a_failed_answer_to_a_client_that_reset_the_link_ends_its_request() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    require_root();
    let dir = TempDir::new("reset-answer");
    let gate = dir.path("gate");
    let mut server = Command::new(fixture_bin())
        .args([
            "slow-http",
            "--delay-ms",
            "0",
            "--keep-open",
            "--gate",
            &gate,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start dw-fixture slow-http");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut lines = BufReader::new(server.stdout.take().expect("piped stdout")).lines();
    let server = Kill(server);
    let ready = lines
        .next()
        .expect("a ready line")
        .expect("read ready line");
    let port =
        drainwatch_tests::fixture::ready_field(&ready, "port").expect("port= in the ready line");
    let pid = server.0.id().to_string();
    let mut client = std::net::TcpStream::connect(("127.0.0.1", port as u16)).expect("connect");
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: drainwatch\r\n\r\n")
        .expect("send request");
    let next = |lines: &mut std::io::Lines<_>| -> String {
        lines
            .next()
            .expect("a fixture line")
            .expect("read fixture line")
    };
    assert_eq!(next(&mut lines), "request");
    // Attached with the request in flight (wait drains at once on an idle server).
    let timeout = format!("{}ms", scaled_ms(20_000));
    let mut wait = Drainwatch::attach(&["wait", "--pid", &pid, "--json", "--timeout", &timeout]);
    // SO_LINGER 0: the close resets the link (RST), which loopback delivers at once.
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket this test owns, with a struct of the size it names.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&client),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER");
    drop(client);
    assert!(
        wait.is_running(),
        "wait holds while the request is unanswered"
    );
    std::fs::write(&gate, b"").expect("open the gate");
    let said = next(&mut lines);
    assert!(said.starts_with("reply failed"), "the answer fails: {said}");
    let done = wait.finish();
    assert_eq!(done.code, 0, "{done:?}");
    let report = last_json(&done.stdout);
    assert_eq!(report["verdict"], "clean", "{report:#}");
    assert!(
        report["drain"]["drained_at_ms"].as_u64().is_some(),
        "{report:#}"
    );
    drop(server);
}
