//! Decoding ring-buffer records, and events through JSON (the -vv format replayed by the
//! state machine's tests).

use super::*;

fn bytes_of<T>(value: &T) -> Vec<u8> {
    // SAFETY: reading the bytes of a plain-old-data struct we own.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

fn comm(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..name.len()].copy_from_slice(name.as_bytes());
    out
}

#[test]
fn decodes_a_signal() {
    let wire = SignalEvent {
        header: EventHeader::new(EventKind::Signal, size_of::<SignalEvent>(), 42),
        target_pid: 100,
        sender_tgid: 7,
        sender_pid: 8,
        sig: 9,
        code: 0,
        result: 0,
        group: 1,
        followed: 1,
        sender_comm: comm("kill"),
        target_comm: comm("nginx"),
    };
    let Event::Signal(signal) = decode(&bytes_of(&wire)).unwrap() else {
        panic!("not a signal")
    };
    assert_eq!(signal.ktime_ns, 42);
    assert_eq!(signal.sender_comm, "kill");
    assert_eq!(signal.target_comm, "nginx");
    assert!(signal.followed);
    assert_eq!(
        (signal.target_pid, signal.sender_tgid, signal.sig),
        (100, 7, 9)
    );
}

#[test]
fn decodes_an_exit_with_and_without_status() {
    let mut wire = ExitEvent {
        header: EventHeader::new(EventKind::Exit, size_of::<ExitEvent>(), 1),
        tgid: 5,
        pid: 5,
        exit_code: 3 << 8,
        exit_code_known: 1,
        comm: comm("a-sixteen-byte-c"),
    };
    let Event::Exit(exit) = decode(&bytes_of(&wire)).unwrap() else {
        panic!()
    };
    assert_eq!(exit.wait_status, Some(3 << 8));
    assert_eq!(exit.comm, "a-sixteen-byte-c");
    wire.exit_code_known = 0;
    let Event::Exit(exit) = decode(&bytes_of(&wire)).unwrap() else {
        panic!()
    };
    assert_eq!(exit.wait_status, None);
}

#[test]
fn a_unix_open_carries_its_inode_in_its_own_field() {
    let mut wire = ConnOpenEvent {
        header: EventHeader::new(EventKind::ConnOpen, size_of::<ConnOpenEvent>(), 3),
        tgid: 10,
        fd: 7,
        role: probe_common::ROLE_CLIENT,
        proto: probe_common::PROTO_UNKNOWN,
        flags: 0,
        _pad: 0,
        listener_fd: 0,
        peer: SockAddr {
            family: libc::AF_UNIX as u16,
            port: 0,
            addr: [0; 16],
        },
        unix_inode: 123_456,
    };
    let Event::ConnOpen(open) = decode(&bytes_of(&wire)).unwrap() else {
        panic!("not an open")
    };
    assert_eq!((open.tgid, open.fd), (10, 7));
    assert_eq!(open.unix_inode, Some(123_456));
    assert_eq!(open.peer, None);
    // A TCP open never has one, whatever the field holds.
    wire.peer = SockAddr {
        family: libc::AF_INET as u16,
        port: 5432,
        addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    };
    let Event::ConnOpen(open) = decode(&bytes_of(&wire)).unwrap() else {
        panic!("not an open")
    };
    assert_eq!(open.unix_inode, None);
    assert_eq!(open.peer, Some("127.0.0.1:5432".parse().unwrap()));
    assert!(!open.existed);
    // A socket from before attach, classified from the survey, says so.
    wire.flags = probe_common::CONN_EXISTED;
    let Event::ConnOpen(open) = decode(&bytes_of(&wire)).unwrap() else {
        panic!("not an open")
    };
    assert!(open.existed);
}

#[test]
fn rejects_bad_records() {
    assert_eq!(decode(&[1, 2, 3]), Err(DecodeError::Short(3)));
    let header = EventHeader {
        kind: 99,
        size: 16,
        ktime_ns: 0,
    };
    assert_eq!(
        decode(&bytes_of(&header)),
        Err(DecodeError::UnknownKind(99))
    );
    let header = EventHeader::new(EventKind::Exit, 16, 0);
    assert!(matches!(
        decode(&bytes_of(&header)),
        Err(DecodeError::BadSize { .. })
    ));
}

#[test]
fn events_round_trip_through_json() {
    let event = Event::Exit(Exit {
        ktime_ns: 1,
        tgid: 2,
        comm: "x".into(),
        wait_status: None,
        busy_fds: vec![7],
    });
    let line = serde_json::to_string(&event).unwrap();
    assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), event);
    let sample = Event::Requests(RequestSample {
        ktime_ns: 5,
        targets: vec![TargetRequests {
            tgid: 2,
            started: 3,
            ended: 2,
            existing_ended: 1,
            last_edge_ns: 4,
            pushed: 1,
            last_input_ns: 4,
            calls: crate::events::TargetCalls {
                started: 2,
                ended: 1,
                first_started: 1,
                first_last_start_ns: 4,
                one_way: 1,
                ..Default::default()
            },
        }],
        latency_us: vec![(120, 2)],
        latency_by_tgid: vec![(2, vec![(120, 2)])],
    });
    let line = serde_json::to_string(&sample).unwrap();
    assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), sample);
}
