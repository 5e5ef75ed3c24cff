//! A ring buffer too small for a burst: events are lost, the kernel counts them, and the
//! verdict is `incomplete` — never `clean` about what was not seen.

use std::{
    io::{Read, Write},
    net::TcpStream,
};

use drainwatch_tests::*;

#[test]
fn a_burst_into_a_tiny_ring_buffer_is_reported_incomplete() {
    require_root();
    let dir = TempDir::new("overflow");
    let report_path = dir.path("report.json");
    let mut server = Server::start(&[]);
    let pid = server.pid.to_string();
    // One page of ring: a few dozen events before it is full.
    let audit = Drainwatch::attach(&[
        "audit",
        "--pid",
        &pid,
        "--ring-size",
        "4096",
        "--report",
        &report_path,
    ]);
    // Requests are counted in the kernel, not sent as events: the burst is of connections
    // (an accept and a close event each), made while drainwatch is stopped so that it
    // cannot drain the ring in between: it overflows for certain.
    audit.signal(libc::SIGSTOP);
    for _ in 0..200 {
        let mut conn = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
        conn.write_all(&[b'x'; 64]).expect("send");
        let mut back = [0u8; 64];
        conn.read_exact(&mut back).expect("echo");
    }
    audit.signal(libc::SIGCONT);
    signal_from_helper(libc::SIGTERM, server.pid);
    server.wait();
    let done = audit.finish();
    let report = read_report(&report_path);
    assert!(report["events"]["lost"].as_u64().unwrap() > 0, "{report:#}");
    assert_eq!(report["verdict"], "incomplete", "{report:#}");
    assert_eq!(done.code, 1, "incomplete is not clean: {done:?}");
    assert!(done.stdout.contains("INCOMPLETE"), "{}", done.stdout);
}

#[test]
fn a_ring_size_that_is_not_a_power_of_two_is_a_usage_error() {
    let done = run_drainwatch(&["audit", "--pid", "1", "--ring-size", "5000"]);
    assert_eq!(done.code, 2, "{done:?}");
    assert!(done.stderr.contains("power of two"), "{}", done.stderr);
}
