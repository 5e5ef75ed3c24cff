//! PostgreSQL conversations, byte for byte as in protocol-message-formats.html.

use super::*;
use Protocol::Postgres as PG;

/// A typed message: type byte, int32 length counting itself, body.
pub(crate) fn msg(ty: u8, body: &[u8]) -> Vec<u8> {
    cat(&[&[ty], &(body.len() as u32 + 4).to_be_bytes(), body])
}

pub(crate) fn startup() -> Vec<u8> {
    let body = cat(&[&196_608u32.to_be_bytes(), b"user\0app\0database\0game\0\0"]);
    cat(&[&(body.len() as u32 + 4).to_be_bytes(), &body])
}

/// AuthenticationOk, two ParameterStatus, BackendKeyData, ReadyForQuery idle.
pub(crate) fn startup_reply() -> Vec<u8> {
    cat(&[
        &msg(b'R', &[0, 0, 0, 0]),
        &msg(b'S', b"server_version\x0016.2\0"),
        &msg(b'S', b"client_encoding\0UTF8\0"),
        &msg(b'K', &[0, 0, 0x30, 0x39, 0xde, 0xad, 0xbe, 0xef]),
        b"Z\0\0\0\x05I",
    ])
}

pub(crate) fn query(sql: &str) -> Vec<u8> {
    msg(b'Q', &cat(&[sql.as_bytes(), b"\0"]))
}

fn row_description() -> Vec<u8> {
    // One int4 column "n".
    msg(
        b'T',
        &cat(&[
            &[0, 1],
            b"n\0",
            &[0; 6],
            &[0, 0, 0, 23],
            &[0, 4],
            &[0xff; 4],
            &[0, 0],
        ]),
    )
}

fn data_row(value: &[u8]) -> Vec<u8> {
    msg(
        b'D',
        &cat(&[&[0, 1], &(value.len() as u32).to_be_bytes(), value]),
    )
}

pub(crate) const Z_IDLE: &[u8] = b"Z\0\0\0\x05I";
pub(crate) const Z_TRANS: &[u8] = b"Z\0\0\0\x05T";
const Z_FAILED: &[u8] = b"Z\0\0\0\x05E";
const TERMINATE: &[u8] = b"X\0\0\0\x04";
const SSL_REQUEST: &[u8] = &[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
const GSSENC_REQUEST: &[u8] = &[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];

fn error(code: &str) -> Vec<u8> {
    msg(
        b'E',
        &cat(&[b"SERROR\0VERROR\0C", code.as_bytes(), b"\0Mboom\0\0"]),
    )
}

/// Startup, BEGIN, a SELECT with rows, a failing statement, ROLLBACK, BEGIN left open.
fn session() -> Vec<Step> {
    vec![
        step(Send, startup(), true, Txn::Idle),
        step(Recv, startup_reply(), false, Txn::Idle),
        step(Send, query("BEGIN"), true, Txn::Idle),
        step(
            Recv,
            cat(&[&msg(b'C', b"BEGIN\0"), Z_TRANS]),
            false,
            Txn::Open,
        ),
        step(Send, query("SELECT n FROM t"), true, Txn::Open),
        step(
            Recv,
            cat(&[
                &row_description(),
                &data_row(b"1"),
                &data_row(b"22"),
                &msg(b'C', b"SELECT 2\0"),
                Z_TRANS,
            ]),
            false,
            Txn::Open,
        ),
        step(Send, query("SELEC oops"), true, Txn::Open),
        step(Recv, cat(&[&error("42601"), Z_FAILED]), false, Txn::Failed),
        step(Send, query("ROLLBACK"), true, Txn::Failed),
        step(
            Recv,
            cat(&[&msg(b'C', b"ROLLBACK\0"), Z_IDLE]),
            false,
            Txn::Idle,
        ),
        step(Send, query("BEGIN"), true, Txn::Idle),
        step(
            Recv,
            cat(&[&msg(b'C', b"BEGIN\0"), Z_TRANS]),
            false,
            Txn::Open,
        ),
    ]
}

#[test]
fn session_split_at_every_point_and_byte_by_byte() {
    play_every_cut(PG, true, &session());
}

#[test]
fn terminate_is_goodbye_not_a_query() {
    let mut conn = play(PG, true, &session(), |_, _| vec![]);
    assert!(!conn.goodbye_sent());
    io(&mut conn, Send, TERMINATE);
    assert!(conn.goodbye_sent());
    assert!(!conn.query_in_flight());
}

#[test]
fn ready_for_query_split_over_three_recvs_after_a_large_one() {
    let mut conn = DbConn::new(PG, false);
    io(&mut conn, Send, &query("SELECT big"));
    let rows: Vec<u8> = (0..40)
        .flat_map(|i| data_row(format!("row-{i}").as_bytes()))
        .collect();
    let reply = cat(&[
        &row_description(),
        &rows,
        &msg(b'C', b"SELECT 40\0"),
        Z_TRANS,
    ]);
    let n = reply.len();
    io(&mut conn, Recv, &reply[..n - 3]);
    assert!(conn.query_in_flight());
    assert_eq!(conn.txn(), Txn::Unknown);
    io(&mut conn, Recv, &reply[n - 3..n - 1]);
    assert!(conn.query_in_flight());
    io(&mut conn, Recv, &reply[n - 1..]);
    assert!(!conn.query_in_flight());
    assert_eq!(conn.txn(), Txn::Open);
}

#[test]
fn ready_for_query_pattern_inside_a_row_is_not_the_end() {
    let mut conn = DbConn::new(PG, true);
    io(&mut conn, Send, &startup());
    io(&mut conn, Recv, &startup_reply());
    io(&mut conn, Send, &query("SELECT payload"));
    let tricky = data_row(b"xxxxZ\0\0\0\x05I");
    let reply = cat(&[
        &row_description(),
        &tricky,
        &tricky,
        &msg(b'C', b"SELECT 2\0"),
        Z_IDLE,
    ]);
    // Cut right after the first row, whose bytes end like a ReadyForQuery.
    let cut = row_description().len() + tricky.len();
    io_cut(&mut conn, Recv, &reply, &[cut]);
    assert!(!conn.query_in_flight());
    let mut conn2 = DbConn::new(PG, true);
    io(&mut conn2, Send, &startup());
    io(&mut conn2, Recv, &startup_reply());
    io(&mut conn2, Send, &query("SELECT payload"));
    io(&mut conn2, Recv, &reply[..cut]);
    assert!(
        conn2.query_in_flight(),
        "a synchronised walker sees the row for what it is"
    );
}

#[test]
fn pipelined_syncs_wait_for_the_last_ready_for_query() {
    let mut conn = DbConn::new(PG, true);
    io(&mut conn, Send, &startup());
    io(&mut conn, Recv, &startup_reply());
    // Bind/Execute/Sync of the unnamed statement, twice in one send of 56 bytes.
    let batch = cat(&[
        &msg(b'B', &[0, 0, 0, 0, 0, 0, 0, 0]),
        &msg(b'E', &[0, 0, 0, 0, 0]),
        &msg(b'S', &[]),
    ]);
    io(&mut conn, Send, &cat(&[&batch, &batch]));
    assert!(conn.query_in_flight());
    let one = cat(&[
        &msg(b'2', &[]),
        &data_row(b"1"),
        &msg(b'C', b"SELECT 1\0"),
        Z_IDLE,
    ]);
    io(&mut conn, Recv, &one);
    assert!(conn.query_in_flight(), "one ReadyForQuery of two");
    io(&mut conn, Recv, &one);
    assert!(!conn.query_in_flight());
}

#[test]
fn notice_after_ready_for_query_in_the_same_recv() {
    let mut conn = DbConn::new(PG, true);
    io(&mut conn, Send, &startup());
    io(&mut conn, Recv, &startup_reply());
    io(&mut conn, Send, &query("BEGIN"));
    let notify = msg(b'A', &cat(&[&[0, 0, 0, 7], b"chan\0hi\0"]));
    io(
        &mut conn,
        Recv,
        &cat(&[&msg(b'C', b"BEGIN\0"), Z_TRANS, &notify]),
    );
    assert!(!conn.query_in_flight());
    assert_eq!(conn.txn(), Txn::Open);
}

#[test]
fn copy_in_with_extended_protocol_sends_two_syncs_gets_one_ready_for_query() {
    let mut conn = DbConn::new(PG, true);
    io(&mut conn, Send, &startup());
    io(&mut conn, Recv, &startup_reply());
    let copy = cat(&[
        &msg(b'P', b"\0COPY t FROM STDIN\0\0\0"),
        &msg(b'B', &[0, 0, 0, 0, 0, 0, 0, 0]),
        &msg(b'E', &[0, 0, 0, 0, 0]),
        &msg(b'S', &[]),
    ]);
    io(&mut conn, Send, &copy);
    io(
        &mut conn,
        Recv,
        &cat(&[
            &msg(b'1', &[]),
            &msg(b'2', &[]),
            &msg(b'G', &[0, 0, 1, 0, 0]),
        ]),
    );
    assert!(conn.query_in_flight());
    io(
        &mut conn,
        Send,
        &cat(&[&msg(b'd', b"1\n"), &msg(b'c', &[]), &msg(b'S', &[])]),
    );
    io(&mut conn, Recv, &cat(&[&msg(b'C', b"COPY 1\0"), Z_IDLE]));
    assert!(!conn.query_in_flight());
}

#[test]
fn ssl_refused_then_plaintext_startup() {
    let steps = vec![
        step(Send, SSL_REQUEST, true, Txn::Idle),
        step(Recv, b"N", false, Txn::Idle),
        step(Send, startup(), true, Txn::Idle),
        step(Recv, startup_reply(), false, Txn::Idle),
        step(Send, query("BEGIN"), true, Txn::Idle),
        step(
            Recv,
            cat(&[&msg(b'C', b"BEGIN\0"), Z_TRANS]),
            false,
            Txn::Open,
        ),
    ];
    play_every_cut(PG, true, &steps);
}

#[test]
fn ssl_or_gss_accepted_makes_the_connection_opaque() {
    for (request, answer) in [(SSL_REQUEST, b"S"), (GSSENC_REQUEST, b"G")] {
        let mut conn = DbConn::new(PG, true);
        io(&mut conn, Send, request);
        assert!(conn.query_in_flight());
        io(&mut conn, Recv, answer);
        assert!(!conn.query_in_flight());
        // TLS records from here on: in flight from a send to the next recv.
        io(&mut conn, Send, &tls_record(0x16, 200));
        assert!(conn.query_in_flight());
        io(&mut conn, Recv, &tls_record(0x17, 5));
        assert!(!conn.query_in_flight());
        assert_eq!(conn.txn(), Txn::Unknown);
        assert_eq!(conn.protocol(), PG);
    }
}

#[test]
fn direct_tls_and_tls_on_a_connection_joined_midway_are_opaque() {
    let mut conn = DbConn::new(PG, true);
    io(&mut conn, Send, &tls_record(0x16, 200));
    io(&mut conn, Recv, Z_TRANS);
    assert_eq!(conn.txn(), Txn::Unknown);
    let mut conn = DbConn::new(PG, false);
    io(&mut conn, Send, &tls_record(0x17, 30));
    assert!(conn.query_in_flight());
    io(&mut conn, Recv, Z_TRANS);
    assert!(!conn.query_in_flight());
    assert_eq!(conn.txn(), Txn::Unknown);
}

#[test]
fn joined_midway_is_unknown_until_ready_for_query() {
    let steps = vec![
        step(
            Recv,
            b"ing rows of a reply we joined late",
            false,
            Txn::Unknown,
        ),
        step(Send, query("SELECT 1"), true, Txn::Unknown),
        step(
            Recv,
            cat(&[
                &row_description(),
                &data_row(b"1"),
                &msg(b'C', b"SELECT 1\0"),
                Z_TRANS,
            ]),
            false,
            Txn::Open,
        ),
        step(Send, query("COMMIT"), true, Txn::Open),
        step(
            Recv,
            cat(&[&msg(b'C', b"COMMIT\0"), Z_IDLE]),
            false,
            Txn::Idle,
        ),
    ];
    play_every_cut(PG, false, &steps);
}

#[test]
fn cancel_request_is_a_goodbye() {
    let mut conn = DbConn::new(PG, true);
    io(
        &mut conn,
        Send,
        &[
            0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0x30, 0x39, 0xde, 0xad, 0xbe, 0xef,
        ],
    );
    assert!(conn.goodbye_sent());
    assert!(!conn.query_in_flight());
}

#[test]
fn garbage_then_a_real_reply() {
    let mut conn = DbConn::new(PG, true);
    io(&mut conn, Send, &startup());
    io(&mut conn, Recv, &startup_reply());
    io(&mut conn, Send, &query("SELECT 1"));
    io(&mut conn, Recv, &[0xff; 100]);
    assert!(conn.query_in_flight());
    io(&mut conn, Recv, b"\x00\x01garbage");
    assert!(conn.query_in_flight());
    io(&mut conn, Recv, &cat(&[&msg(b'C', b"SELECT 1\0"), Z_TRANS]));
    assert!(!conn.query_in_flight());
    assert_eq!(conn.txn(), Txn::Open);
    // The walker found its feet again: the next reply is followed exactly.
    io(&mut conn, Send, &query("COMMIT"));
    io(&mut conn, Recv, &msg(b'C', b"COMMIT\0"));
    assert!(conn.query_in_flight());
    io_by(&mut conn, Recv, Z_IDLE, 1);
    assert!(!conn.query_in_flight());
    assert_eq!(conn.txn(), Txn::Idle);
}

#[test]
fn large_query_text_is_skipped_by_length() {
    let mut conn = DbConn::new(PG, true);
    io(&mut conn, Send, &startup());
    io(&mut conn, Recv, &startup_reply());
    let sql = format!("SELECT {}", "1,".repeat(5000));
    io_cut(&mut conn, Send, &query(&sql), &[1000, 4000]);
    assert!(conn.query_in_flight());
    io(
        &mut conn,
        Recv,
        &cat(&[
            &row_description(),
            &data_row(b"1"),
            &msg(b'C', b"SELECT 1\0"),
            Z_IDLE,
        ]),
    );
    assert!(!conn.query_in_flight());
}
