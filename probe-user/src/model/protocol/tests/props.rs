//! Property tests: no input panics, and any split of a valid conversation ends in the right
//! state.

use proptest::prelude::*;

use super::mysql::{com_query, greeting, handshake_response, ok, pkt};
use super::postgres::{msg, query, startup, startup_reply, Z_TRANS};
use super::*;

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![
        Just(Protocol::Postgres),
        Just(Protocol::Mysql),
        Just(Protocol::Redis),
        Just(Protocol::Unknown)
    ]
}

/// An arbitrary syscall report, kept or not to the kernel's contract.
fn raw_io() -> impl Strategy<Value = (bool, u32, Vec<u8>, Vec<u8>)> {
    (
        any::<bool>(),
        prop_oneof![0u32..80, any::<u32>()],
        proptest::collection::vec(any::<u8>(), 0..40),
        proptest::collection::vec(any::<u8>(), 0..40),
    )
}

/// Sorted cut points within `0..len`.
fn cuts(len: usize) -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(0..len.max(1), 0..12).prop_map(|mut v| {
        v.sort_unstable();
        v
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_reports_never_panic(
        protocol in protocol(),
        seen in any::<bool>(),
        ios in proptest::collection::vec(raw_io(), 0..40),
    ) {
        let mut conn = DbConn::new(protocol, seen);
        for (send, len, head, tail) in &ios {
            let dir = if *send { Send } else { Recv };
            conn.on_io(&DbIo { dir, len: *len, head, tail });
            let _ = (conn.query_in_flight(), conn.txn(), conn.goodbye_sent());
        }
    }

    #[test]
    fn arbitrary_bytes_and_splits_never_panic(
        protocol in protocol(),
        seen in any::<bool>(),
        streams in proptest::collection::vec(
            (any::<bool>(), proptest::collection::vec(any::<u8>(), 1..300), cuts(300)),
            0..12,
        ),
    ) {
        let mut conn = DbConn::new(protocol, seen);
        for (send, bytes, cuts) in &streams {
            io_cut(&mut conn, if *send { Send } else { Recv }, bytes, cuts);
        }
    }

    #[test]
    fn postgres_any_split_of_a_reply_ending_in_z_t(
        seen in any::<bool>(),
        rows in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..120), 0..20),
        cut_fraction in proptest::collection::vec(0.0f64..1.0, 0..10),
        send_cuts in cuts(40),
    ) {
        let mut conn = DbConn::new(Protocol::Postgres, seen);
        if seen {
            io_cut(&mut conn, Send, &startup(), &send_cuts);
            io(&mut conn, Recv, &startup_reply());
        }
        io_cut(&mut conn, Send, &query("SELECT payload FROM t"), &send_cuts);
        prop_assert!(conn.query_in_flight());
        let mut reply = msg(b'T', b"\0\x01payload\0\0\0\0\0\0\0\0\0\0\x11\xff\xff\xff\xff\xff\xff\0\0");
        for r in &rows {
            reply.extend(msg(b'D', &cat(&[&[0, 1], &(r.len() as u32).to_be_bytes(), r])));
        }
        reply.extend(msg(b'C', format!("SELECT {}\0", rows.len()).as_bytes()));
        reply.extend(Z_TRANS);
        let mut cuts: Vec<usize> =
            cut_fraction.iter().map(|f| (f * reply.len() as f64) as usize).collect();
        cuts.sort_unstable();
        prop_assert!(io_cut_held(&mut conn, Recv, &reply, &cuts), "ended early");
        prop_assert!(!conn.query_in_flight());
        prop_assert_eq!(conn.txn(), Txn::Open);
    }

    #[test]
    fn mysql_any_split_of_a_result_set(
        deprecate in any::<bool>(),
        rows in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..100), 0..300),
        cut_fraction in proptest::collection::vec(0.0f64..1.0, 0..10),
    ) {
        let mut conn = DbConn::new(Protocol::Mysql, true);
        io(&mut conn, Recv, &greeting());
        io(&mut conn, Send, &handshake_response(if deprecate { 0x0100_0000 } else { 0 }));
        io(&mut conn, Recv, &ok(2, 2));
        io(&mut conn, Send, &com_query("SELECT b FROM t"));
        let def = pkt(2, b"\x03def\x04game\x01t\x01t\x01b\x01b\x0c\x3f\0\xff\xff\0\0\xfc\x80\0\0\0\0");
        let mut reply = cat(&[&pkt(1, &[1]), &def]);
        let mut seq = 3u8;
        if !deprecate {
            reply.extend(pkt(seq, &[0xfe, 0, 0, 2, 0]));
            seq += 1;
        }
        for r in &rows {
            // A text row: one length-encoded string.
            reply.extend(pkt(seq, &cat(&[&[r.len() as u8], r])));
            seq = seq.wrapping_add(1);
        }
        let last = if deprecate { vec![0xfe, 0, 0, 1, 0, 0, 0] } else { vec![0xfe, 0, 0, 1, 0] };
        reply.extend(pkt(seq, &last));
        let mut cuts: Vec<usize> =
            cut_fraction.iter().map(|f| (f * reply.len() as f64) as usize).collect();
        cuts.sort_unstable();
        prop_assert!(io_cut_held(&mut conn, Recv, &reply, &cuts), "ended early");
        prop_assert!(!conn.query_in_flight());
        prop_assert_eq!(conn.txn(), Txn::Open);
    }

    #[test]
    fn redis_any_split_of_pipelined_replies(
        values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..6),
        cut_fraction in proptest::collection::vec(0.0f64..1.0, 0..10),
    ) {
        let mut conn = DbConn::new(Protocol::Redis, true);
        let send: Vec<u8> = (0..values.len()).flat_map(|i| super::redis::cmd(&["GET", &i.to_string()])).collect();
        io(&mut conn, Send, &send);
        let mut reply = Vec::new();
        for v in &values {
            reply.extend(format!("${}\r\n", v.len()).into_bytes());
            reply.extend(v);
            reply.extend(b"\r\n");
        }
        let mut cuts: Vec<usize> =
            cut_fraction.iter().map(|f| (f * reply.len() as f64) as usize).collect();
        cuts.sort_unstable();
        let held = io_cut_held(&mut conn, Recv, &reply, &cuts);
        // Syscalls of up to 64 bytes are read whole: commands and replies are counted exactly.
        let mut edges = vec![0];
        edges.extend(cuts.iter().copied().filter(|&c| c > 0 && c < reply.len()));
        edges.push(reply.len());
        let whole = send.len() <= 64 && edges.windows(2).all(|w| w[1] - w[0] <= 64);
        prop_assert!(held || !whole, "ended early");
        prop_assert!(!conn.query_in_flight());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn redis_any_split_of_a_pipelined_transaction(
        values in proptest::collection::vec("[a-z0-9\r\n]{0,80}", 1..5),
        send_cuts in cuts(400),
        reply_cuts in cuts(400),
    ) {
        let mut conn = DbConn::new(Protocol::Redis, true);
        let mut send = super::redis::cmd(&["MULTI"]);
        for (i, v) in values.iter().enumerate() {
            send.extend(super::redis::cmd(&["SET", &format!("k{i}"), v]));
        }
        send.extend(super::redis::cmd(&["EXEC"]));
        io_cut(&mut conn, Send, &send, &send_cuts);
        prop_assert!(conn.query_in_flight());
        prop_assert_eq!(conn.txn(), Txn::Open);
        let mut reply = b"+OK\r\n".to_vec();
        reply.extend(b"+QUEUED\r\n".repeat(values.len()));
        reply.extend(format!("*{}\r\n", values.len()).into_bytes());
        reply.extend(b"+OK\r\n".repeat(values.len()));
        prop_assert!(io_cut_held(&mut conn, Recv, &reply, &reply_cuts), "ended early");
        prop_assert!(!conn.query_in_flight());
        prop_assert_eq!(conn.txn(), Txn::Idle);
    }

    #[test]
    fn mysql_any_split_of_query_and_ok(
        sql in "[ -~]{1,300}",
        send_cuts in cuts(300),
        reply_cuts in cuts(11),
        status in any::<u16>(),
    ) {
        let mut conn = DbConn::new(Protocol::Mysql, true);
        io(&mut conn, Recv, &greeting());
        io(&mut conn, Send, &handshake_response(0));
        io(&mut conn, Recv, &ok(2, 2));
        io_cut(&mut conn, Send, &com_query(&sql), &send_cuts);
        prop_assert!(conn.query_in_flight());
        let status = status & !0x0008;
        io_cut(&mut conn, Recv, &ok(1, status), &reply_cuts);
        prop_assert!(!conn.query_in_flight());
        let want = if status & 1 != 0 { Txn::Open } else { Txn::Idle };
        prop_assert_eq!(conn.txn(), want);
    }
}
