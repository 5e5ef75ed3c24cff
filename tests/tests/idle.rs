//! Connections that existed before attach (issue 13, "idle is idle"), on a real
//! redis-server from Debian with real clients: answered-and-idle connections do not hold a
//! drain, a slow command in flight does. The rule: docs/how-it-sees.md.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use drainwatch_tests::{
    db::{Database, RedisServer},
    game::mono_ns,
    *,
};

const QUIET_MS: u64 = 100;

/// A raw RESP client connection that sent PING and read PONG, as a pooled client does.
fn pinged(port: u16) -> TcpStream {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect to redis");
    command(&mut conn, b"*1\r\n$4\r\nPING\r\n", b"+PONG\r\n");
    conn
}

/// Sends one command and reads exactly the expected reply.
fn command(conn: &mut TcpStream, request: &[u8], reply: &[u8]) {
    conn.write_all(request).unwrap();
    let mut got = vec![0u8; reply.len()];
    conn.read_exact(&mut got).unwrap();
    assert_eq!(got, reply, "{}", String::from_utf8_lossy(&got));
}

/// The last JSON line: the report.
fn report_of(stdout: &str) -> Value {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.contains("drainwatch.report/v1"))
        .unwrap_or_else(|| panic!("no report in {stdout}"));
    serde_json::from_str(line).unwrap()
}

fn unresolved(report: &Value) -> Vec<&Value> {
    report["coverage"]["unknown_at_attach"]
        .as_array()
        .expect("coverage.unknown_at_attach")
        .iter()
        .filter(|u| u["resolved_by"].is_null())
        .collect()
}

#[test]
fn redis_with_idle_clients_is_drained_within_the_quiet_window() {
    require_root();
    let redis = RedisServer::start();
    // Each answered within one kernel tick: the tie the old rule counted as busy.
    let _clients: Vec<TcpStream> = (0..3).map(|_| pinged(redis.port())).collect();
    std::thread::sleep(Duration::from_millis(30));
    let pid = redis.pid().to_string();
    let done = run_drainwatch(&["wait", "--pid", &pid, "--json", "--timeout", "5s"]);
    assert_eq!(done.code, 0, "{done:?}");
    let report = report_of(&done.stdout);
    assert_eq!(report["verdict"], "clean", "{report:#}");
    let drained_at = report["drain"]["drained_at_ms"].as_u64().unwrap();
    // Quiet window from attach, plus a recheck tick if a thread was caught running.
    assert!(
        drained_at <= 2 * QUIET_MS,
        "drained at {drained_at} ms: {report:#}"
    );
    assert!(unresolved(&report).is_empty(), "{report:#}");
    println!("redis, 3 idle clients: drained at {drained_at} ms");
}

#[test]
fn stopping_redis_with_idle_clients_is_clean() {
    require_root();
    let redis = RedisServer::start();
    let _clients: Vec<TcpStream> = (0..3).map(|_| pinged(redis.port())).collect();
    std::thread::sleep(Duration::from_millis(30));
    let pid = redis.pid().to_string();
    let done = run_drainwatch(&["stop", "--pid", &pid, "--json", "--timeout", "10s"]);
    assert_eq!(done.code, 0, "{done:?}");
    let report = report_of(&done.stdout);
    assert_eq!(report["verdict"], "clean", "{report:#}");
    assert!(report["violations"].as_array().unwrap().is_empty());
    assert_eq!(report["targets"][0]["exit"]["code"], 0, "{report:#}");
    assert!(unresolved(&report).is_empty(), "{report:#}");
}

#[test]
fn a_slow_redis_command_in_flight_at_attach_holds_wait() {
    require_root();
    let redis = RedisServer::start();
    let _idle: Vec<TcpStream> = (0..3).map(|_| pinged(redis.port())).collect();
    let mut slow = pinged(redis.port());
    // In a later kernel tick than its PONG.
    std::thread::sleep(Duration::from_millis(30));
    slow.write_all(b"*3\r\n$5\r\nDEBUG\r\n$5\r\nSLEEP\r\n$3\r\n1.5\r\n")
        .unwrap();
    let reply = std::thread::spawn(move || {
        let mut got = [0u8; 5];
        slow.read_exact(&mut got).unwrap();
        (got, mono_ns())
    });
    std::thread::sleep(Duration::from_millis(100));
    let pid = redis.pid().to_string();
    let mut wait = Drainwatch::spawn(&["wait", "--pid", &pid, "--json", "--timeout", "10s"]);
    let lines = wait.stdout_lines();
    let verdict = lines
        .iter()
        .find(|l| l.contains("drainwatch.report/v1"))
        .expect("wait printed its report");
    let verdict_at = mono_ns();
    let (got, replied_at) = reply.join().unwrap();
    assert_eq!(&got, b"+OK\r\n");
    let done = wait.finish();
    assert_eq!(done.code, 0, "{done:?}");
    assert!(
        verdict_at >= replied_at,
        "drained {:.1} ms before the reply: {verdict}",
        (replied_at - verdict_at) as f64 / 1e6
    );
    let report: Value = serde_json::from_str(&verdict).unwrap();
    assert_eq!(report["verdict"], "clean", "{report:#}");
}

/// A client blocked in BLPOP (a consumer waiting for work) since before attach is not a
/// request in flight: redis says so itself (`CLIENT LIST` flags=b, asked at attach). The
/// kernel alone would call it one: it received a command and never answered.
#[test]
fn a_client_blocked_in_blpop_before_attach_does_not_hold_wait_or_stop() {
    require_root();
    let redis = RedisServer::start();
    let _idle: Vec<TcpStream> = (0..2).map(|_| pinged(redis.port())).collect();
    let mut consumer = TcpStream::connect(("127.0.0.1", redis.port())).unwrap();
    consumer
        .write_all(b"*3\r\n$5\r\nBLPOP\r\n$4\r\njobs\r\n$1\r\n0\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(30));
    let pid = redis.pid().to_string();
    let done = run_drainwatch(&["wait", "--pid", &pid, "--json", "--timeout", "5s", "-v"]);
    assert_eq!(done.code, 0, "{done:?}");
    assert!(
        done.stderr
            .contains("blocked waiting for data (the server says)"),
        "{}",
        done.stderr
    );
    let report = report_of(&done.stdout);
    let drained_at = report["drain"]["drained_at_ms"].as_u64().unwrap();
    assert!(
        drained_at <= 2 * QUIET_MS,
        "drained at {drained_at} ms: {report:#}"
    );

    let done = run_drainwatch(&["stop", "--pid", &pid, "--json", "--timeout", "10s"]);
    assert_eq!(done.code, 0, "{done:?}");
    let report = report_of(&done.stdout);
    assert_eq!(report["verdict"], "clean", "{report:#}");
}
