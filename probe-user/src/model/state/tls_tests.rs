//! Replays of TLS conversations read through the SSL_read/SSL_write hooks (`audit -vv` of
//! tests/fixtures/pg_shop.py, psycopg 3 / libpq, against a private PostgreSQL 15 with ssl=on).

use super::*;
use crate::model::report::Verdict;

const ATTACH_NS: u64 = 1_000_000_000;
const SELF_TGID: u32 = 5000;

fn replay(state: &mut AuditState, recorded: &str) {
    for line in recorded.lines().filter(|l| !l.trim().is_empty()) {
        state.apply(&serde_json::from_str::<Event>(line).expect("recorded event parses"));
    }
}

fn kinds(report: &Report) -> Vec<&'static str> {
    report.violations.iter().map(|v| v.kind()).collect()
}

const RECORDED: &str = include_str!("../../../testdata/pg_tls_hooked_midway_kill9.jsonl");

fn launched() -> AuditState {
    let mut state = AuditState::new(ATTACH_NS, SELF_TGID).with_sockets();
    state.add_target(25866, "python".into(), Origin::Launched);
    state
}

/// Launched under audit; the connection's SSLRequest, 'S', TLS handshake and first queries
/// went by as ciphertext (libpq connected a few ms after loading libssl, before the hooks
/// were attached), then the SSL hooks read the request's BEGIN and INSERT in plaintext
/// (`"tls": true`), and a kill -9 cut the transaction. Ground truth: the ledger had no row.
#[test]
fn tls_read_from_the_middle_sees_the_transaction_cut_by_kill9() {
    let mut state = launched();
    replay(&mut state, RECORDED);
    let report = state.report(Mode::Audit, 0, vec![]);
    assert_eq!(
        kinds(&report),
        [
            "sigkill",
            "open_transaction",
            "leaked_db_connection",
            "inflight_at_exit"
        ]
    );
    assert!(report.coverage.as_ref().unwrap().unverified.is_empty());
}

/// The same recording without the plaintext the hooks read: nothing of the transaction is
/// known, and the verdict says so (`incomplete`, the connection unverified), never `clean`
/// and never an `open_transaction` it did not see.
#[test]
fn without_the_tls_plaintext_the_same_run_is_unverified() {
    let without: String = RECORDED
        .lines()
        .filter(|l| !l.contains("\"tls\":true"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(
        without.len(),
        RECORDED.len(),
        "the recording has TLS plaintext"
    );
    let mut state = launched();
    replay(&mut state, &without);
    let report = state.report(Mode::Audit, 0, vec![]);
    assert!(!kinds(&report).contains(&"open_transaction"));
    assert_eq!(report.coverage.as_ref().unwrap().unverified.len(), 1);
    assert_eq!(report.verdict, Verdict::Incomplete);
}

/// A connection seen from its opening whose TLS is read from its first plaintext message:
/// SSLRequest, 'S' and the handshake are ciphertext to the parser (opaque), then the hooks'
/// StartupMessage starts the protocol over inside TLS. Bytes as the kernel keeps them
/// (probe-common's redact: 5 head bytes, a ReadyForQuery tail).
#[test]
fn tls_read_from_its_first_message_follows_the_whole_conversation() {
    use crate::events::Direction::{Recv, Send};
    use crate::model::protocol::{DbConn, DbIo, Txn};
    let io = |dir, len, head: &'static [u8], tail: &'static [u8]| DbIo {
        dir,
        len,
        head,
        tail,
    };
    let mut db = DbConn::new(Protocol::Postgres, true);
    db.on_io(&io(Send, 8, &[0, 0, 0, 8, 4, 210, 22, 47], &[]));
    db.on_io(&io(Recv, 1, b"S", b"S"));
    db.on_io(&io(Send, 300, &[22, 3, 1, 1, 39], &[]));
    db.on_io(&io(Recv, 1200, &[22, 3, 3, 0, 122], &[]));
    assert!(db.encrypted(), "the handshake makes it opaque");
    let startup = io(Send, 80, &[0, 0, 0, 80, 0, 3, 0, 0], &[]);
    db.start_tls_plaintext(&startup);
    db.on_io(&startup);
    assert!(!db.encrypted() && db.tls_plaintext());
    // AuthenticationOk ... ReadyForQuery 'I'.
    db.on_io(&io(
        Recv,
        400,
        &[b'R', 0, 0, 0, 8],
        &[b'Z', 0, 0, 0, 5, b'I'],
    ));
    assert_eq!(db.txn(), Txn::Idle);
    db.on_io(&io(Send, 11, &[b'Q', 0, 0, 0, 10], &[]));
    assert!(db.query_in_flight());
    db.on_io(&io(
        Recv,
        17,
        &[b'C', 0, 0, 0, 10],
        &[b'Z', 0, 0, 0, 5, b'T'],
    ));
    assert_eq!(db.txn(), Txn::Open);
    assert!(!db.query_in_flight());
    db.on_io(&io(Send, 12, &[b'Q', 0, 0, 0, 11], &[]));
    db.on_io(&io(
        Recv,
        18,
        &[b'C', 0, 0, 0, 11],
        &[b'Z', 0, 0, 0, 5, b'I'],
    ));
    assert_eq!(db.txn(), Txn::Idle);
    db.on_io(&io(Send, 5, &[b'X', 0, 0, 0, 4], &[]));
    assert!(db.goodbye_sent(), "Terminate, read inside TLS");
}

/// MySQL/MariaDB from its greeting: the client's SSL request packet (sequence 1,
/// CLIENT_SSL) makes the rest ciphertext; inside TLS the full handshake response (sequence
/// 2, CLIENT_SSL again: it means nothing more there) restarts the parser at the handshake
/// (https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_connection_phase.html).
/// Packets as the kernel keeps them.
#[test]
fn mysql_tls_read_from_its_handshake_response_follows_the_conversation() {
    use crate::events::Direction::{Recv, Send};
    use crate::model::protocol::{DbConn, DbIo, Txn};
    let io = |dir, len, head: &'static [u8], tail: &'static [u8]| DbIo {
        dir,
        len,
        head,
        tail,
    };
    // CLIENT_PROTOCOL_41 | CLIENT_SSL | CLIENT_SECURE_CONNECTION ... (0x000fa68d).
    const CAPS: [u8; 4] = [0x8d, 0xae, 0x0f, 0x00];
    let mut db = DbConn::new(Protocol::Mysql, true);
    let greeting: &[u8] = b"\x4a\x00\x00\x00\x0a10.11.6-MariaDB\x00";
    db.on_io(&io(Recv, 78, greeting, &[]));
    let ssl_request: &[u8] = &[32, 0, 0, 1, CAPS[0], CAPS[1], CAPS[2], CAPS[3]];
    db.on_io(&io(Send, 36, ssl_request, &[]));
    db.on_io(&io(Send, 300, &[22, 3, 1, 1, 39], &[]));
    db.on_io(&io(Recv, 1200, &[22, 3, 3, 0, 122], &[]));
    assert!(db.encrypted(), "CLIENT_SSL makes it opaque");
    let response = io(
        Send,
        90,
        &[86, 0, 0, 2, CAPS[0], CAPS[1], CAPS[2], CAPS[3]],
        &[],
    );
    db.start_tls_plaintext(&response);
    db.on_io(&response);
    assert!(!db.encrypted() && db.tls_plaintext());
    let ok: &[u8] = &[7, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0];
    db.on_io(&io(Recv, 11, ok, ok));
    assert!(!db.query_in_flight(), "authenticated");
    db.on_io(&io(Send, 10, &[6, 0, 0, 0, 3], &[]));
    assert!(db.query_in_flight());
    let in_trans: &[u8] = &[7, 0, 0, 1, 0, 0, 0, 3, 0, 0, 0];
    db.on_io(&io(Recv, 11, in_trans, in_trans));
    assert_eq!(db.txn(), Txn::Open);
    db.on_io(&io(Send, 5, &[1, 0, 0, 0, 1], &[1, 0, 0, 0, 1]));
    assert!(db.goodbye_sent(), "COM_QUIT, read inside TLS");
}
