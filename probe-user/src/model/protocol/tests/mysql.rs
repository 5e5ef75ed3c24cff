//! MySQL conversations, byte for byte as in the MySQL client/server protocol documentation.

use super::*;
use Protocol::Mysql as MY;

const CLIENT_PROTOCOL_41: u32 = 0x200;
const CLIENT_SSL: u32 = 0x800;
const CLIENT_SECURE_CONNECTION: u32 = 0x8000;
const CLIENT_PLUGIN_AUTH: u32 = 0x8_0000;
const CLIENT_DEPRECATE_EOF: u32 = 0x0100_0000;

/// 3-byte little-endian payload length, sequence id, payload.
pub(crate) fn pkt(seq: u8, payload: &[u8]) -> Vec<u8> {
    let n = payload.len() as u32;
    cat(&[&n.to_le_bytes()[..3], &[seq], payload])
}

pub(crate) fn greeting() -> Vec<u8> {
    pkt(
        0,
        &cat(&[
            b"\x0a8.0.36\0",
            &[0x0b, 0, 0, 0],
            b"abcdefgh\0",
            &[0xff, 0xff, 0xff, 0x02, 0x00, 0xff, 0xdf, 21],
            &[0; 10],
            b"ijklmnopqrst\0caching_sha2_password\0",
        ]),
    )
}

pub(crate) fn handshake_response(caps: u32) -> Vec<u8> {
    let caps = caps | CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH;
    pkt(
        1,
        &cat(&[
            &caps.to_le_bytes(),
            &[0, 0, 0, 1, 0xff],
            &[0; 23],
            b"app\0",
            &[20],
            &[0x5a; 20],
            b"caching_sha2_password\0",
        ]),
    )
}

/// OK: header, affected rows, last insert id, status flags, warnings.
pub(crate) fn ok(seq: u8, status: u16) -> Vec<u8> {
    pkt(seq, &cat(&[&[0, 0, 0], &status.to_le_bytes(), &[0, 0]]))
}

/// OK with the 0xfe header that ends a result set under CLIENT_DEPRECATE_EOF.
fn ok_fe(seq: u8, status: u16) -> Vec<u8> {
    pkt(seq, &cat(&[&[0xfe, 0, 0], &status.to_le_bytes(), &[0, 0]]))
}

fn eof(seq: u8, status: u16) -> Vec<u8> {
    pkt(seq, &cat(&[&[0xfe, 0, 0], &status.to_le_bytes()]))
}

fn err(seq: u8, message: &str) -> Vec<u8> {
    pkt(
        seq,
        &cat(&[&[0xff, 0x7a, 0x04], b"#42S02", message.as_bytes()]),
    )
}

pub(crate) fn com_query(sql: &str) -> Vec<u8> {
    pkt(0, &cat(&[&[0x03], sql.as_bytes()]))
}

fn column_def(seq: u8, name: &str) -> Vec<u8> {
    let lenenc = |s: &str| cat(&[&[s.len() as u8], s.as_bytes()]);
    pkt(
        seq,
        &cat(&[
            &lenenc("def"),
            &lenenc("game"),
            &lenenc("t"),
            &lenenc("t"),
            &lenenc(name),
            &lenenc(name),
            &[
                0x0c, 0x3f, 0x00, 0x0b, 0, 0, 0, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00,
            ],
        ]),
    )
}

fn text_row(seq: u8, value: &str) -> Vec<u8> {
    pkt(seq, &cat(&[&[value.len() as u8], value.as_bytes()]))
}

const IN_TRANS: u16 = 0x0001;
const AUTOCOMMIT: u16 = 0x0002;
const MORE_RESULTS: u16 = 0x0008;

/// Text result set of one column, `rows` rows, without CLIENT_DEPRECATE_EOF.
fn result_set(rows: usize, status: u16) -> Vec<u8> {
    let mut out = cat(&[&pkt(1, &[1]), &column_def(2, "n"), &eof(3, AUTOCOMMIT)]);
    for i in 0..rows {
        out.extend(text_row((4 + i) as u8, &i.to_string()));
    }
    out.extend(eof((4 + rows) as u8, status));
    out
}

fn login(caps: u32) -> Vec<Step> {
    vec![
        step(Recv, greeting(), false, Txn::Idle),
        step(Send, handshake_response(caps), true, Txn::Idle),
        step(Recv, ok(2, AUTOCOMMIT), false, Txn::Idle),
    ]
}

#[test]
fn session_without_deprecate_eof_split_everywhere() {
    let mut steps = login(0);
    steps.extend([
        step(Send, com_query("BEGIN"), true, Txn::Idle),
        step(Recv, [7, 0, 0, 1, 0, 0, 0, 3, 0, 0, 0], false, Txn::Open),
        step(Send, com_query("SELECT n FROM t"), true, Txn::Open),
        step(Recv, result_set(2, IN_TRANS), false, Txn::Open),
        step(Send, com_query("SELECT n FROM t WHERE 0"), true, Txn::Open),
        step(Recv, result_set(0, IN_TRANS), false, Txn::Open),
        step(Send, com_query("SELECT nope"), true, Txn::Open),
        step(
            Recv,
            err(1, "Table 'game.nope' doesn't exist"),
            false,
            Txn::Open,
        ),
        step(Send, com_query("COMMIT"), true, Txn::Open),
        step(Recv, ok(1, AUTOCOMMIT), false, Txn::Idle),
    ]);
    play_every_cut(MY, true, &steps);
}

#[test]
fn session_with_deprecate_eof_split_everywhere() {
    let mut steps = login(CLIENT_DEPRECATE_EOF);
    let rows = cat(&[
        &pkt(1, &[1]),
        &column_def(2, "n"),
        &text_row(3, "7"),
        &ok_fe(4, IN_TRANS),
    ]);
    steps.extend([
        step(Send, com_query("START TRANSACTION"), true, Txn::Idle),
        step(Recv, ok(1, IN_TRANS | AUTOCOMMIT), false, Txn::Open),
        step(Send, com_query("SELECT n FROM t"), true, Txn::Open),
        step(Recv, rows, false, Txn::Open),
        step(Send, com_query("ROLLBACK"), true, Txn::Open),
        step(Recv, ok(1, AUTOCOMMIT), false, Txn::Idle),
    ]);
    play_every_cut(MY, true, &steps);
}

#[test]
fn auth_switch_and_more_data_do_not_end_the_login() {
    let steps = vec![
        step(Recv, greeting(), false, Txn::Idle),
        step(Send, handshake_response(0), true, Txn::Idle),
        step(
            Recv,
            pkt(2, b"\xfemysql_native_password\0abcdefghijklmnopqrst\0"),
            true,
            Txn::Idle,
        ),
        step(Send, pkt(3, &[0x11; 20]), true, Txn::Idle),
        step(Recv, pkt(4, &[0x01, 0x03]), true, Txn::Idle),
        step(Recv, ok(5, AUTOCOMMIT), false, Txn::Idle),
    ];
    play_every_cut(MY, true, &steps);
}

#[test]
fn quit_close_and_long_data_start_nothing() {
    let mut conn = play(MY, true, &login(0), |_, _| vec![]);
    io(&mut conn, Send, &pkt(0, &[0x19, 1, 0, 0, 0]));
    assert!(!conn.query_in_flight());
    io(&mut conn, Send, &pkt(0, &[0x18, 1, 0, 0, 0, 0, 0, b'x']));
    assert!(!conn.query_in_flight());
    assert!(!conn.goodbye_sent());
    io(&mut conn, Send, &[1, 0, 0, 0, 1]);
    assert!(conn.goodbye_sent());
    assert!(!conn.query_in_flight());
}

#[test]
fn multiple_results_end_at_the_last() {
    let mut conn = play(MY, true, &login(0), |_, _| vec![]);
    io(&mut conn, Send, &com_query("CALL p()"));
    let first = result_set(1, IN_TRANS | MORE_RESULTS);
    io(&mut conn, Recv, &first);
    assert!(conn.query_in_flight(), "more results follow");
    io(&mut conn, Recv, &ok(first.len() as u8, IN_TRANS));
    let mut conn2 = play(MY, true, &login(0), |_, _| vec![]);
    io(&mut conn2, Send, &com_query("CALL p()"));
    let all = cat(&[&result_set(1, IN_TRANS | MORE_RESULTS), &ok(6, IN_TRANS)]);
    io(&mut conn2, Recv, &all);
    assert!(!conn2.query_in_flight());
    assert_eq!(conn2.txn(), Txn::Open);
}

#[test]
fn prepare_reply_counts_its_definitions() {
    // COM_STMT_PREPARE "SELECT n FROM t WHERE id = ?": 1 column, 1 parameter.
    let prepare_ok = pkt(1, &[0, 1, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0]);
    for deprecate in [false, true] {
        let caps = if deprecate { CLIENT_DEPRECATE_EOF } else { 0 };
        let mut reply = cat(&[&prepare_ok, &column_def(2, "?")]);
        if deprecate {
            reply.extend(column_def(3, "n"));
        } else {
            reply.extend(cat(&[
                &eof(3, AUTOCOMMIT),
                &column_def(4, "n"),
                &eof(5, AUTOCOMMIT),
            ]));
        }
        let mut steps = login(caps);
        steps.extend([
            step(
                Send,
                pkt(0, b"\x16SELECT n FROM t WHERE id = ?"),
                true,
                Txn::Idle,
            ),
            step(Recv, reply, false, Txn::Idle),
            step(
                Send,
                pkt(
                    0,
                    &[0x17, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 0, 5, 0, 0, 0],
                ),
                true,
                Txn::Idle,
            ),
            step(Recv, ok(1, AUTOCOMMIT), false, Txn::Idle),
        ]);
        play_every_cut(MY, true, &steps);
    }
}

#[test]
fn large_result_set_seen_through_keyholes() {
    let mut conn = play(MY, true, &login(0), |_, _| vec![]);
    io(&mut conn, Send, &com_query("SELECT n FROM t"));
    let reply = result_set(300, IN_TRANS);
    io_cut(&mut conn, Recv, &reply, &[500, 1200]);
    assert!(!conn.query_in_flight());
    assert_eq!(conn.txn(), Txn::Open);
}

#[test]
fn column_definition_eof_at_the_end_of_a_large_recv_is_not_the_end() {
    let mut conn = play(MY, true, &login(0), |_, _| vec![]);
    io(&mut conn, Send, &com_query("SELECT a, b, c FROM t"));
    let mut defs = pkt(1, &[3]);
    for (i, name) in ["aaaaaaaaaa", "bbbbbbbbbbbb", "cccccccccccc"]
        .iter()
        .enumerate()
    {
        defs.extend(column_def(2 + i as u8, name));
    }
    defs.extend(eof(5, AUTOCOMMIT));
    // The middle of this recv hides the column definitions' headers: the walker is lost.
    io(&mut conn, Recv, &defs);
    assert!(
        conn.query_in_flight(),
        "the EOF after the definitions does not end the reply"
    );
    io(
        &mut conn,
        Recv,
        &cat(&[&text_row(6, "1"), &eof(7, AUTOCOMMIT)]),
    );
    assert!(!conn.query_in_flight());
}

#[test]
fn long_error_as_a_single_recv_on_a_connection_joined_midway() {
    let mut conn = DbConn::new(MY, false);
    assert_eq!(conn.txn(), Txn::Unknown);
    io(
        &mut conn,
        Send,
        &com_query("SELECT * FROM a_table_that_does_not_exist"),
    );
    assert!(conn.query_in_flight());
    let long = err(
        1,
        &"Table 'game.a_table_that_does_not_exist' doesn't exist ".repeat(3),
    );
    io(&mut conn, Recv, &long);
    assert!(!conn.query_in_flight());
    assert_eq!(conn.txn(), Txn::Unknown, "ERR carries no status");
    io(&mut conn, Send, &com_query("BEGIN"));
    io(&mut conn, Recv, &ok(1, IN_TRANS));
    assert_eq!(conn.txn(), Txn::Open);
}

#[test]
fn pipelined_prepare_and_execute_wait_for_both_replies() {
    let mut conn = play(MY, true, &login(CLIENT_DEPRECATE_EOF), |_, _| vec![]);
    let prepare = pkt(0, b"\x16DO ?");
    let execute = pkt(
        0,
        &[
            0x17, 0xff, 0xff, 0xff, 0xff, 0, 1, 0, 0, 0, 0, 1, 3, 0, 5, 0, 0, 0,
        ],
    );
    io(&mut conn, Send, &cat(&[&prepare, &execute]));
    io(
        &mut conn,
        Recv,
        &cat(&[
            &pkt(1, &[0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]),
            &column_def(2, "?"),
        ]),
    );
    assert!(conn.query_in_flight(), "EXECUTE still owes its reply");
    io(&mut conn, Recv, &ok(1, IN_TRANS));
    assert!(!conn.query_in_flight());
    assert_eq!(conn.txn(), Txn::Open);
}

#[test]
fn local_infile_waits_for_the_final_ok() {
    let mut steps = login(0);
    steps.extend([
        step(
            Send,
            com_query("LOAD DATA LOCAL INFILE 'x' INTO TABLE t"),
            true,
            Txn::Idle,
        ),
        step(Recv, pkt(1, b"\xfbx"), true, Txn::Idle),
        step(Send, pkt(2, b"1\n2\n"), true, Txn::Idle),
        step(Send, pkt(3, b""), true, Txn::Idle),
        step(Recv, ok(4, AUTOCOMMIT), false, Txn::Idle),
    ]);
    play_every_cut(MY, true, &steps);
}

#[test]
fn ssl_request_makes_the_connection_opaque() {
    let mut conn = DbConn::new(MY, true);
    io(&mut conn, Recv, &greeting());
    io(
        &mut conn,
        Send,
        &pkt(
            1,
            &cat(&[&(CLIENT_SSL | CLIENT_PROTOCOL_41).to_le_bytes(), &[0; 28]]),
        ),
    );
    assert!(conn.query_in_flight());
    io(&mut conn, Recv, &tls_record(0x16, 10));
    assert!(!conn.query_in_flight());
    io(&mut conn, Recv, &ok(2, IN_TRANS));
    assert_eq!(conn.txn(), Txn::Unknown);
}

#[test]
fn garbage_does_not_end_a_query_but_the_next_command_resynchronises() {
    let mut conn = play(MY, true, &login(0), |_, _| vec![]);
    io(&mut conn, Send, &com_query("SELECT 1"));
    io(&mut conn, Recv, &[0x42; 90]);
    assert!(conn.query_in_flight());
    io(&mut conn, Recv, b"\x01\x02");
    assert!(conn.query_in_flight());
    io(&mut conn, Send, &com_query("SELECT 2"));
    io_by(&mut conn, Recv, &result_set(1, AUTOCOMMIT), 1);
    assert!(!conn.query_in_flight());
    assert_eq!(conn.txn(), Txn::Idle);
}

#[test]
fn call_with_a_large_result_set_ends_at_its_final_ok() {
    let mut conn = play(MY, true, &login(0), |_, _| vec![]);
    io(&mut conn, Send, &com_query("CALL leaderboard()"));
    let rows = result_set(100, IN_TRANS | MORE_RESULTS);
    // 5 + 100 rows + 1 packets of the result set; the final OK follows with the next seq.
    let reply = cat(&[&rows, &ok(105, IN_TRANS)]);
    io_cut(&mut conn, Recv, &reply, &[700]);
    assert!(!conn.query_in_flight());
    assert_eq!(conn.txn(), Txn::Open);
}

#[test]
fn unsolicited_eof_status_on_a_connection_joined_midway() {
    let mut conn = DbConn::new(MY, false);
    io(&mut conn, Recv, &[0x33; 200]);
    assert_eq!(conn.txn(), Txn::Unknown);
    io(&mut conn, Recv, &cat(&[&[0x44; 100], &eof(9, IN_TRANS)]));
    assert_eq!(
        conn.txn(),
        Txn::Open,
        "an EOF packet ending the stream carries the status"
    );
    assert!(!conn.query_in_flight());
}

#[test]
fn final_eof_whose_sequence_wrapped_onto_the_definitions_eof() {
    // 255 (or 511) rows: the final EOF carries the sequence id the EOF after the column
    // definitions had. The bytes before it tell them apart.
    for rows in [255usize, 511] {
        for row_len in [0usize, 30] {
            let mut reply = result_set(0, AUTOCOMMIT);
            reply.truncate(reply.len() - 9);
            let mut seq = 4u8;
            for _ in 0..rows {
                reply.extend(pkt(seq, &cat(&[&[row_len as u8], &vec![b'x'; row_len]])));
                seq = seq.wrapping_add(1);
            }
            assert_eq!(seq, 3);
            reply.extend(eof(seq, IN_TRANS));
            let near_end = reply.len() - 80..reply.len();
            for cut in (0..reply.len()).step_by(97).chain(near_end) {
                let mut conn = play(MY, true, &login(0), |_, _| vec![]);
                io(&mut conn, Send, &com_query("SELECT b FROM t"));
                io_cut(&mut conn, Recv, &reply, &[cut]);
                assert!(
                    !conn.query_in_flight(),
                    "rows {rows}, row_len {row_len}, cut {cut}"
                );
                assert_eq!(conn.txn(), Txn::Open);
            }
        }
    }
}

#[test]
fn state_at_attach_from_innodb_trx_holds_until_the_server_tells() {
    // Joined midway; --db-url's information_schema.innodb_trx says a transaction is open.
    let mut conn = DbConn::new(MY, false);
    conn.assume_txn(Txn::Open);
    assert_eq!(conn.txn(), Txn::Open);
    io(&mut conn, Send, &com_query("COMMIT"));
    io(&mut conn, Recv, &ok(1, AUTOCOMMIT));
    assert_eq!(conn.txn(), Txn::Idle, "the OK's status flags win");
    conn.assume_txn(Txn::Open);
    assert_eq!(conn.txn(), Txn::Idle, "a known state is never overridden");
}

/// libmariadb's own bytes (mysqlclient: `BEGIN`, an INSERT, `conn.rollback()`, close),
/// recorded under strace against MariaDB 10.11, through the kernel's redaction, on a
/// connection joined midway: the 9-byte COM_QUERY answered by an OK that clears
/// SERVER_STATUS_IN_TRANS is the client's rollback (mysql.rs, "ROLLBACK").
#[test]
fn a_clients_rollback_is_told_by_its_length_through_the_redaction() {
    use super::redacted::redacted_io;
    let begin = hex_bytes("0600000003424547494e");
    let insert = hex_bytes("1900000003494e5345525420494e544f20742056414c55455320283129");
    let rollback = hex_bytes("0900000003524f4c4c4241434b");
    let ok_in_trans = hex_bytes("0700000100000003000000");
    let ok_inserted = hex_bytes("0700000100010003000000");
    let ok_idle = hex_bytes("0700000100000002000000");
    let quit = hex_bytes("0100000001");

    let mut conn = DbConn::new(MY, false);
    redacted_io(&mut conn, Send, &begin);
    redacted_io(&mut conn, Recv, &ok_in_trans);
    assert!(!conn.take_rollback());
    redacted_io(&mut conn, Send, &insert);
    redacted_io(&mut conn, Recv, &ok_inserted);
    assert_eq!(conn.txn(), Txn::Open);
    assert!(!conn.take_rollback());
    redacted_io(&mut conn, Send, &rollback);
    assert!(!conn.take_rollback(), "not before the server's OK");
    redacted_io(&mut conn, Recv, &ok_idle);
    assert_eq!(conn.txn(), Txn::Idle);
    assert!(conn.take_rollback(), "the ROLLBACK's OK");
    assert!(!conn.take_rollback(), "cleared by asking");
    redacted_io(&mut conn, Send, &quit);
    assert!(!conn.take_rollback());

    // A COMMIT (7 bytes) ends the transaction too: no rollback.
    let mut conn = DbConn::new(MY, false);
    redacted_io(&mut conn, Send, &begin);
    redacted_io(&mut conn, Recv, &ok_in_trans);
    redacted_io(&mut conn, Send, &hex_bytes("0700000003434f4d4d4954"));
    redacted_io(&mut conn, Recv, &ok_idle);
    assert_eq!(conn.txn(), Txn::Idle);
    assert!(!conn.take_rollback());

    // A 9-byte query outside a transaction (nothing to roll back), or one that leaves it
    // open, is no rollback either.
    let mut conn = DbConn::new(MY, false);
    redacted_io(&mut conn, Send, &com_query("SELECT  1"));
    redacted_io(&mut conn, Recv, &ok_idle);
    assert!(!conn.take_rollback());
    redacted_io(&mut conn, Send, &begin);
    redacted_io(&mut conn, Recv, &ok_in_trans);
    redacted_io(&mut conn, Send, &com_query("SELECT  1"));
    redacted_io(&mut conn, Recv, &ok_in_trans);
    assert!(!conn.take_rollback());
}

fn hex_bytes(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}
