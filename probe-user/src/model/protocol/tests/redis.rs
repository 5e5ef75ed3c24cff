//! Redis conversations, byte for byte as in the RESP specification.

use super::*;
use Protocol::Redis as RE;

/// A command as clients send it: an array of bulk strings.
pub(crate) fn cmd(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend(format!("${}\r\n{a}\r\n", a.len()).into_bytes());
    }
    out
}

#[test]
fn multi_exec_split_everywhere() {
    let steps = vec![
        step(Send, b"*1\r\n$5\r\nMULTI\r\n", true, Txn::Open),
        step(Recv, b"+OK\r\n", false, Txn::Open),
        step(Send, cmd(&["INCR", "players"]), true, Txn::Open),
        step(Recv, b"+QUEUED\r\n", false, Txn::Open),
        step(Send, cmd(&["INCR", "games"]), true, Txn::Open),
        step(Recv, b"+QUEUED\r\n", false, Txn::Open),
        step(Send, b"*1\r\n$4\r\nEXEC\r\n", true, Txn::Open),
        step(Recv, b"*2\r\n:1\r\n:1\r\n", false, Txn::Idle),
        step(Send, cmd(&["GET", "players"]), true, Txn::Idle),
        step(Recv, b"$1\r\n1\r\n", false, Txn::Idle),
    ];
    play_every_cut(RE, true, &steps);
}

#[test]
fn pipelined_transaction_in_one_send() {
    let send = cat(&[
        &cmd(&["multi"]),
        &cmd(&["SET", "player:1:score", "1200"]),
        &cmd(&["ZADD", "leaderboard", "1200", "player:1"]),
        &cmd(&["exec"]),
    ]);
    let reply = b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n+OK\r\n:1\r\n";
    let steps = vec![
        step(Send, send, true, Txn::Open),
        step(Recv, reply, false, Txn::Idle),
    ];
    play_every_cut(RE, true, &steps);
}

#[test]
fn discard_closes_the_transaction() {
    let steps = vec![
        step(Send, cmd(&["MULTI"]), true, Txn::Open),
        step(Recv, b"+OK\r\n", false, Txn::Open),
        step(Send, cmd(&["DISCARD"]), true, Txn::Open),
        step(Recv, b"+OK\r\n", false, Txn::Idle),
    ];
    play_every_cut(RE, true, &steps);
}

#[test]
fn pipelined_gets_wait_for_every_reply() {
    let send = cat(&[
        &cmd(&["GET", "a"]),
        &cmd(&["GET", "b"]),
        &cmd(&["GET", "c"]),
    ]);
    let mut conn = DbConn::new(RE, true);
    io(&mut conn, Send, &send);
    io(&mut conn, Recv, b"$1\r\nx\r\n");
    assert!(conn.query_in_flight());
    io(&mut conn, Recv, b"$-1\r\n");
    assert!(conn.query_in_flight());
    io(&mut conn, Recv, b"$2\r\nyz\r\n");
    assert!(!conn.query_in_flight());
}

#[test]
fn bulk_reply_split_at_a_crlf_inside_its_data() {
    let value = "line one\r\nline two\r\nline three, long enough to leave the keyholes\r\n";
    let reply = format!("${}\r\n{value}\r\n", value.len()).into_bytes();
    let steps = vec![
        step(Send, cmd(&["GET", "motd"]), true, Txn::Idle),
        step(Recv, reply, false, Txn::Idle),
    ];
    play_every_cut(RE, true, &steps);
}

#[test]
fn large_bulk_reply_seen_through_keyholes() {
    let mut conn = DbConn::new(RE, true);
    io(&mut conn, Send, &cmd(&["GET", "blob"]));
    let value = "v\r\n".repeat(3000);
    let reply = format!("${}\r\n{value}\r\n", value.len()).into_bytes();
    io_cut(&mut conn, Recv, &reply, &[4096, 8192]);
    assert!(!conn.query_in_flight());
}

#[test]
fn large_array_reply_loses_the_reader_and_ends_at_crlf() {
    let mut conn = DbConn::new(RE, true);
    io(&mut conn, Send, &cmd(&["LRANGE", "l", "0", "-1"]));
    let mut reply = b"*500\r\n".to_vec();
    for i in 0..500 {
        reply.extend(format!("${}\r\n{i}\r\n", i.to_string().len()).into_bytes());
    }
    io(&mut conn, Recv, &reply);
    assert!(!conn.query_in_flight());
    // The reader found its feet again on the next exchange.
    io(&mut conn, Send, &cmd(&["PING"]));
    io(&mut conn, Recv, b"+PO");
    assert!(conn.query_in_flight());
    io(&mut conn, Recv, b"NG\r\n");
    assert!(!conn.query_in_flight());
}

#[test]
fn inline_commands() {
    let steps = vec![
        step(Send, b"PING\r\n", true, Txn::Idle),
        step(Recv, b"+PONG\r\n", false, Txn::Idle),
        step(Send, b"MULTI\r\n", true, Txn::Open),
        step(Recv, b"+OK\r\n", false, Txn::Open),
        step(Send, b"exec\r\n", true, Txn::Open),
        step(Recv, b"*0\r\n", false, Txn::Idle),
    ];
    play_every_cut(RE, true, &steps);
}

#[test]
fn quit_is_goodbye() {
    let mut conn = DbConn::new(RE, true);
    io(&mut conn, Send, b"*1\r\n$4\r\nQUIT\r\n");
    assert!(conn.goodbye_sent());
    assert!(!conn.query_in_flight());
    io(&mut conn, Recv, b"+OK\r\n");
    assert!(!conn.query_in_flight());
}

#[test]
fn joined_midway_learns_the_transaction_from_replies() {
    let mut conn = DbConn::new(RE, false);
    assert_eq!(conn.txn(), Txn::Unknown);
    io(&mut conn, Send, &cmd(&["INCR", "x"]));
    io(&mut conn, Recv, b"+QUEUED\r\n");
    assert_eq!(conn.txn(), Txn::Open, "queued: inside MULTI");
    assert!(!conn.query_in_flight());
    io(&mut conn, Send, &cmd(&["EXEC"]));
    io(&mut conn, Recv, b"*1\r\n:5\r\n");
    assert_eq!(conn.txn(), Txn::Idle);

    let mut conn = DbConn::new(RE, false);
    io(&mut conn, Send, &cmd(&["GET", "x"]));
    io(&mut conn, Recv, b":5\r\n");
    assert_eq!(conn.txn(), Txn::Idle, "an answer, not QUEUED: no MULTI");

    let mut conn = DbConn::new(RE, false);
    io(&mut conn, Send, &cmd(&["GET", "x"]));
    io(
        &mut conn,
        Recv,
        b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
    );
    assert_eq!(conn.txn(), Txn::Unknown, "an error says nothing");
}

#[test]
fn tls_on_a_connection_joined_midway_is_opaque() {
    let mut conn = DbConn::new(RE, false);
    io(&mut conn, Send, &tls_record(0x17, 40));
    assert!(conn.query_in_flight());
    io(&mut conn, Recv, b"+QUEUED\r\n");
    assert!(!conn.query_in_flight());
    assert_eq!(conn.txn(), Txn::Unknown);
}
