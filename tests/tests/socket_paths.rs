//! Ways a server closes or moves a client socket without close(2) on the fd it was accepted
//! as (docs/hooks.md, "Keying: by socket"): close_range(2), close-on-exec at execve, and an
//! fd passed to itself with SCM_RIGHTS. The socket-level backends follow the socket, so
//! they see all three; the syscall hooks see fds and miss them (how-it-sees.md, "What it
//! cannot see"), and the tests hold each backend to what its documentation says.
//!
//! The server is CPython (`socket`, `os.closerange`, which is close_range(2) on Linux,
//! `os.execv`, `socket.send_fds`), launched under `drainwatch audit -- python`; the client is
//! this test. And a server that moves its bytes through io_uring (`dw-fixture uring-echo`).

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::process::CommandExt,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use drainwatch_tests::{read_report, require_root, shop::python, *};
use serde_json::Value;

/// Accepts one client, reads its request, then as MODE says:
/// - `close_range`: closes every fd from the client's up with close_range(2), unanswered;
/// - `exec`: execs `sleep` (the client socket is close-on-exec, as Python makes sockets);
/// - `scm_rights`: passes the client fd to itself over a socketpair before reading, closes
///   the original, and answers through the received fd.
const SERVER: &str = r#"
import os, socket, sys, time
port, mode = int(sys.argv[1]), sys.argv[2]
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", port))
listener.listen()
conn, _ = listener.accept()
if mode == "scm_rights":
    a, b = socket.socketpair()
    socket.send_fds(a, [b"x"], [conn.fileno()])
    _, fds, _, _ = socket.recv_fds(b, 1, 1)
    conn.close()
    conn = socket.socket(fileno=fds[0])
    request = conn.recv(64)
    conn.sendall(request)
    conn.recv(64)
    conn.close()
    time.sleep(0.3)
    sys.exit(0)
conn.recv(64)
if mode == "close_range":
    os.closerange(conn.fileno(), conn.fileno() + 1)
    time.sleep(0.5)
    os._exit(0)
if mode == "exec":
    os.execv("/bin/sleep", ["sleep", "0.5"])
"#;

fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Connects as soon as the server listens.
fn connect(port: u16) -> TcpStream {
    let deadline = Instant::now() + Duration::from_millis(scaled_ms(20_000));
    loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(conn) => return conn,
            Err(e) if Instant::now() >= deadline => panic!("the server never listened: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Runs the server under `drainwatch audit`, plays the client, returns the report and
/// drainwatch's stderr. `uring`: the io_uring echo fixture, three round trips.
fn audit(mode: &str) -> (Value, String) {
    let dir = TempDir::new(&format!("socket-paths-{mode}"));
    let report_path = dir.path("report.json");
    let stderr_path = dir.path("stderr.txt");
    // To a file, not a pipe nobody reads while the test plays the client: -vv fills one.
    let stderr_file = std::fs::File::create(&stderr_path).expect("stderr file");
    let port = free_port();
    let mut audit = Command::new(drainwatch_bin());
    audit.args(["audit", "-vv", "--report", &report_path, "--"]);
    if mode == "uring" {
        audit
            .arg(fixture_bin())
            .args(["uring-echo", "--port", &port.to_string()]);
    } else {
        audit
            .arg(python())
            .args(["-c", SERVER, &port.to_string(), mode]);
    }
    // Its own process group, so that a failing test takes drainwatch and the server it
    // launched down with it (a leftover audit once failed the next binary's checks that
    // nothing stays loaded).
    let audit = audit
        .stdout(Stdio::null())
        .stderr(stderr_file)
        .process_group(0)
        .spawn()
        .expect("run drainwatch audit");
    let mut audit = GroupGuard(audit);
    let audit = &mut audit.0;
    let mut conn = connect(port);
    conn.set_read_timeout(Some(Duration::from_millis(scaled_ms(10_000))))
        .unwrap();
    match mode {
        "uring" => {
            for round in 0..3u8 {
                let ping = [round; 64];
                let mut back = [0u8; 64];
                let mut echoed = conn
                    .write_all(&ping)
                    .and_then(|_| conn.read_exact(&mut back));
                // The port came from `free_port` before the fixture bound it: another
                // test's short-lived server can hold it for a moment, and the first round
                // then reaches (and is reset by) that one, while ours still waits to
                // accept. Only the first round can be that; it goes again on a new
                // connection, which only our fixture can take once it listens.
                let deadline = Instant::now() + Duration::from_millis(scaled_ms(20_000));
                while round == 0 && echoed.is_err() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                    conn = connect(port);
                    conn.set_read_timeout(Some(Duration::from_millis(scaled_ms(10_000))))
                        .unwrap();
                    echoed = conn
                        .write_all(&ping)
                        .and_then(|_| conn.read_exact(&mut back));
                }
                echoed.expect("the echo, through io_uring");
                assert_eq!(back, ping);
            }
        }
        "scm_rights" => {
            conn.write_all(b"hello").unwrap();
            let mut back = [0u8; 5];
            conn.read_exact(&mut back)
                .expect("the answer, through the passed fd");
            assert_eq!(&back, b"hello");
        }
        _ => {
            conn.write_all(b"hello").unwrap();
            // The server closes without answering: EOF (or a reset).
            let mut rest = Vec::new();
            let _ = conn.read_to_end(&mut rest);
            assert!(rest.is_empty(), "no answer expected: {rest:?}");
        }
    }
    drop(conn);
    let status = wait_with_deadline(audit, Duration::from_millis(scaled_ms(30_000)));
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(status.is_some(), "drainwatch audit did not end: {stderr}");
    (read_report(&report_path), stderr)
}

/// Kills a child's whole process group when dropped (a no-op once it has exited and been
/// reaped: the group is gone).
struct GroupGuard(std::process::Child);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            // SAFETY: kill(2) on our own child's process group; no memory is involved.
            unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
            let _ = self.0.wait();
        }
    }
}

fn socket_level() -> bool {
    hooks() != "syscalls"
}

fn exit_ms(report: &Value) -> u64 {
    report["targets"][0]["exit"]["at_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("the target's exit: {report:#}"))
}

/// A request cut by the close of its socket: `request_dropped` at the close, before the
/// exit, on the socket-level backends.
fn assert_dropped_before_exit(report: &Value, stderr: &str) {
    let dropped = violations(report, "request_dropped");
    assert_eq!(dropped.len(), 1, "{report:#}\n{stderr}");
    assert!(
        dropped[0]["at_ms"].as_u64() < Some(exit_ms(report)),
        "dropped at its close, not at the exit: {report:#}"
    );
    assert!(
        violations(report, "inflight_at_exit").is_empty(),
        "{report:#}\n{stderr}"
    );
    assert_eq!(report["connections"]["client_closed"], 1, "{report:#}");
}

/// What the syscall hooks miss: the connection and its request stay open until the exit.
fn assert_seen_only_at_exit(report: &Value, stderr: &str) {
    assert!(
        violations(report, "request_dropped").is_empty(),
        "{report:#}\n{stderr}"
    );
    let cut = violations(report, "inflight_at_exit");
    assert_eq!(cut.len(), 1, "{report:#}\n{stderr}");
    assert_eq!(cut[0]["requests"], 1, "{report:#}");
}

/// The server cuts the request in flight by closing its socket as `mode` says: each backend
/// held to its side of how-it-sees.md.
fn a_request_cut_by(mode: &str) {
    require_root();
    let (report, stderr) = audit(mode);
    assert_eq!(report["verdict"], "violations", "{report:#}\n{stderr}");
    if socket_level() {
        assert_dropped_before_exit(&report, &stderr);
    } else {
        assert_seen_only_at_exit(&report, &stderr);
    }
}

#[test]
fn a_request_cut_by_close_range_is_dropped_at_the_close() {
    a_request_cut_by("close_range");
}

#[test]
fn a_request_cut_by_close_on_exec_is_dropped_at_the_exec() {
    a_request_cut_by("exec");
}

#[test]
fn a_socket_passed_with_scm_rights_is_the_same_connection() {
    require_root();
    let (report, stderr) = audit("scm_rights");
    assert_eq!(
        report["connections"]["client_opened"], 1,
        "{report:#}\n{stderr}"
    );
    assert_eq!(
        report["connections"]["client_closed"], 1,
        "{report:#}\n{stderr}"
    );
    if socket_level() {
        // The request is read and answered through the received fd: one socket, one
        // connection, its request counted, nothing cut.
        assert_eq!(report["requests"]["count"], 1, "{report:#}\n{stderr}");
        assert_eq!(report["verdict"], "clean", "{report:#}\n{stderr}");
    } else {
        // The syscall hooks close the connection with its first fd and never learn the
        // received one: the request goes unseen (how-it-sees.md, "Duplicated fds").
        assert_eq!(report["requests"]["count"], 0, "{report:#}\n{stderr}");
    }
}

#[test]
fn requests_moved_through_io_uring_are_counted() {
    require_root();
    let (report, stderr) = audit("uring");
    assert_eq!(
        report["connections"]["client_opened"], 1,
        "{report:#}\n{stderr}"
    );
    if socket_level() {
        // Every send and recv reaches the socket hooks, whichever way it was submitted.
        assert_eq!(report["requests"]["count"], 3, "{report:#}\n{stderr}");
        assert_eq!(report["verdict"], "clean", "{report:#}\n{stderr}");
    } else {
        // The syscall hooks see the accept and the close, and no request at all
        // (how-it-sees.md, "Other I/O paths").
        assert_eq!(report["requests"]["count"], 0, "{report:#}\n{stderr}");
    }
}
