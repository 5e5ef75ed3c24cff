//! Replays of recorded database endings (`audit -vv` of tests/fixtures/pg_shop.py against a
//! private PostgreSQL 15): work dropped tidily, a goodbye then exit, TLS, a transaction open
//! before attach.

use super::*;
use crate::model::report::{RollbackHow, UnknownAtAttach, Verdict};
use crate::model::{conns::AtAttach, protocol::Txn};

const ATTACH_NS: u64 = 1_000_000_000;
const SELF_TGID: u32 = 5000;

fn replay(state: &mut AuditState, recorded: &str) {
    for line in recorded.lines().filter(|l| !l.trim().is_empty()) {
        state.apply(&serde_json::from_str::<Event>(line).expect("recorded event parses"));
    }
}

fn named(tgid: u32) -> AuditState {
    let mut state = AuditState::new(ATTACH_NS, SELF_TGID).with_sockets();
    state.add_target(tgid, "python".into(), Origin::Named);
    state
}

fn kinds(report: &Report) -> Vec<&'static str> {
    report.violations.iter().map(|v| v.kind()).collect()
}

/// The "tidy-but-lossy" SIGTERM handler: closes the client without answering, sends
/// Terminate inside the open transaction (PostgreSQL rolled it back: the ledger had no row),
/// exits 0. Everything looks tidy to the kernel; the business operation is lost twice over.
#[test]
fn tidy_but_lossy_sigterm_is_a_dropped_request_and_a_rolled_back_transaction() {
    let mut state = named(21518);
    replay(
        &mut state,
        include_str!("../../../testdata/pg_tidy_lossy_sigterm.jsonl"),
    );
    let report = state.report(Mode::Audit, 0, vec![]);
    assert_eq!(report.verdict, Verdict::Violations);
    assert_eq!(
        kinds(&report),
        ["request_dropped", "transaction_rolled_back"]
    );
    let Violation::RequestDropped(dropped) = &report.violations[0] else {
        panic!()
    };
    assert_eq!(
        (dropped.fd, dropped.peer.as_deref()),
        (5, Some("127.0.0.1:54518"))
    );
    assert!(
        dropped.age_ms >= 50,
        "in flight since the request line: {}",
        dropped.age_ms
    );
    let Violation::TransactionRolledBack(rb) = &report.violations[1] else {
        panic!()
    };
    assert_eq!(
        (rb.fd, rb.how, rb.protocol),
        (3, RollbackHow::Goodbye, Protocol::Postgres)
    );
    assert!(rb.age_ms >= 50, "open since BEGIN: {}", rb.age_ms);
    assert_eq!(report.targets[0].exit.as_ref().unwrap().code, Some(0));
}

/// Terminate written, then exit without close(2) (node-pg's `pool.end()` then
/// `process.exit(0)`): the kernel closes a connection the protocol already ended. Clean.
#[test]
fn a_goodbye_then_exit_is_a_clean_close() {
    let mut state = named(31519);
    replay(
        &mut state,
        include_str!("../../../testdata/pg_goodbye_then_exit.jsonl"),
    );
    let report = state.report(Mode::Audit, 0, vec![]);
    assert_eq!(kinds(&report), Vec::<&str>::new());
    assert_eq!(report.verdict, Verdict::Clean);
}

/// The same recording cut before the Terminate: the exit then leaks the connection, so the
/// clean verdict above comes from the goodbye, not from a blind spot.
#[test]
fn without_the_goodbye_the_same_exit_leaks() {
    let recorded = include_str!("../../../testdata/pg_goodbye_then_exit.jsonl");
    let without: String = recorded
        .lines()
        .filter(|l| !l.contains("\"head\":[88,0,0,0,4]"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(
        without.len(),
        recorded.len(),
        "the recording has a Terminate"
    );
    let mut state = named(31519);
    replay(&mut state, &without);
    let report = state.report(Mode::Audit, 0, vec![]);
    assert_eq!(kinds(&report), ["leaked_db_connection"]);
}

/// libpq's default sslmode=prefer against ssl=on: the conversation is TLS from its first
/// byte. A graceful stop (request finished, connection closed after an encrypted Terminate)
/// is not a leak, but not `clean` either: drainwatch did not see the goodbye.
#[test]
fn an_unread_tls_conversation_is_unverified_and_incomplete_never_a_leak() {
    let mut state = named(29770);
    // Found at attach (the pool connected before): /proc gave its peer.
    let db = "127.0.0.1:55499".parse().ok();
    state.add_existing_conn(
        (29770, 3),
        Role::Db,
        Protocol::Postgres,
        None,
        db,
        AtAttach::Idle,
    );
    replay(
        &mut state,
        include_str!("../../../testdata/pg_tls_graceful_sigterm.jsonl"),
    );
    let report = state.report(Mode::Audit, 0, vec![]);
    assert_eq!(kinds(&report), Vec::<&str>::new());
    assert_eq!(report.verdict, Verdict::Incomplete);
    let unverified = &report.coverage.as_ref().unwrap().unverified;
    assert_eq!(unverified.len(), 1);
    assert_eq!(
        (
            unverified[0].fd,
            unverified[0].peer.as_deref(),
            unverified[0].why
        ),
        (3, Some("127.0.0.1:55499"), "tls-not-decrypted")
    );
}

/// asyncpg pool, attached while a request's transaction was open (what the runs
/// did), then an exit at once. The bytes after attach say nothing of the transaction; the
/// backends' process titles did (read at attach: fd 6 "idle in transaction", fd 7 "idle").
#[test]
fn a_transaction_open_before_attach_is_known_from_the_backend_and_cut_by_the_exit() {
    let recorded = include_str!("../../../testdata/asyncpg_attached_mid_transaction.jsonl");
    let setup = |state: &mut AuditState| {
        let tgid = 28361;
        let db: std::net::SocketAddr = "127.0.0.1:55499".parse().unwrap();
        for fd in [6, 7] {
            state.add_existing_conn(
                (tgid, fd),
                Role::Db,
                Protocol::Postgres,
                None,
                Some(db),
                AtAttach::Idle,
            );
        }
        let client = "127.0.0.1:45432".parse().ok();
        state.add_existing_conn(
            (tgid, 9),
            Role::Client,
            Protocol::Unknown,
            None,
            client,
            AtAttach::Busy,
        );
    };
    // Without the backend's view: the miss the issue reported.
    let mut blind = named(28361);
    setup(&mut blind);
    replay(&mut blind, recorded);
    let report = blind.report(Mode::Audit, 0, vec![]);
    assert!(!kinds(&report).contains(&"open_transaction"));
    // ... but unknown is shown as unknown: both listed, never resolved (cut by the exit).
    let blind_unknown: Vec<(u32, Option<&str>)> = unknown_txns(&blind)
        .iter()
        .map(|u| (u.fd, u.resolved_by))
        .collect();
    assert_eq!(blind_unknown, [(6, None), (7, None)]);
    // With it.
    let mut state = named(28361);
    setup(&mut state);
    state.db_state_at_attach((28361, 6), Txn::Open);
    state.db_state_at_attach((28361, 7), Txn::Idle);
    replay(&mut state, recorded);
    let report = state.report(Mode::Audit, 0, vec![]);
    assert_eq!(
        kinds(&report),
        [
            "open_transaction",
            "leaked_db_connection",
            "leaked_db_connection",
            "inflight_at_exit"
        ]
    );
    let Violation::OpenTransaction(txn) = &report.violations[0] else {
        panic!()
    };
    assert_eq!(txn.fd, 6);
}

/// MySQL packets, byte for byte (MySQL client/server protocol): an OK with its status flags
/// (SERVER_STATUS_IN_TRANS = 1), and a COM_QUERY.
fn my_ok(status: u16) -> Vec<u8> {
    let s = status.to_le_bytes();
    vec![7, 0, 0, 1, 0, 0, 0, s[0], s[1], 0, 0]
}

fn my_query(sql: &str) -> Vec<u8> {
    let mut out = vec![sql.len() as u8 + 1, 0, 0, 0, 3];
    out.extend_from_slice(sql.as_bytes());
    out
}

fn db_io(key: (u32, u32), ms: u64, dir: crate::events::Direction, bytes: &[u8]) -> Event {
    Event::DbIo(crate::events::DbIo {
        ktime_ns: ATTACH_NS + ms * 1_000_000,
        tgid: key.0,
        fd: key.1,
        dir,
        protocol: Protocol::Mysql,
        len: bytes.len() as u32,
        head: bytes.to_vec(),
        tail: bytes.to_vec(),
        tls: false,
    })
}

fn existing_mysql(state: &mut AuditState, key: (u32, u32)) {
    let db = "127.0.0.1:3306".parse().ok();
    state.add_existing_conn(key, Role::Db, Protocol::Mysql, None, db, AtAttach::Idle);
}

fn unknown_txns(state: &AuditState) -> Vec<UnknownAtAttach> {
    let report = state.report(Mode::Wait, 0, vec![]);
    report
        .coverage
        .unwrap()
        .unknown_at_attach
        .into_iter()
        .filter(|u| u.what == "transaction")
        .collect()
}

/// A database connection from before attach whose transaction state nothing settled holds
/// the drain (unknown is not "no transaction") until its first reply that carries the
/// state: the write-behind worker's COMMIT, answered by an OK without IN_TRANS.
#[test]
fn an_unknown_transaction_state_holds_until_the_next_reply_tells() {
    use crate::events::Direction::{Recv, Send};
    let key = (31000, 5);
    let mut state = named(key.0);
    existing_mysql(&mut state, key);
    let held = state.conns().unwrap().in_flight(None);
    assert_eq!((held.unknown, held.unknown_txns), (1, 1));
    assert!(!held.is_idle(), "unknown holds the drain");
    assert_eq!(state.conns().unwrap().txn_unknown().len(), 1);
    // The COMMIT goes out: still unknown (a send carries no state), a query in flight.
    state.apply(&db_io(key, 100, Send, &my_query("COMMIT")));
    assert_eq!(state.conns().unwrap().in_flight(None).unknown_txns, 1);
    state.apply(&db_io(key, 104, Recv, &my_ok(0x0002)));
    let now = state.conns().unwrap().in_flight(None);
    assert!(now.is_idle(), "{now:?}");
    let listed = unknown_txns(&state);
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (
            listed[0].fd,
            listed[0].resolved_by,
            listed[0].resolved_at_ms
        ),
        (5, Some("traffic"), Some(104))
    );
    assert_eq!(state.idle_since(), Some(ATTACH_NS + 104 * 1_000_000));
}

/// The first reply says a transaction is open: from then on it is an open transaction like
/// any other (held, and a violation if the exit cuts it).
#[test]
fn a_reply_in_a_transaction_turns_unknown_into_open() {
    use crate::events::Direction::{Recv, Send};
    let key = (31001, 6);
    let mut state = named(key.0);
    existing_mysql(&mut state, key);
    state.apply(&db_io(key, 10, Send, &my_query("UPDATE t SET n = n + 1")));
    state.apply(&db_io(key, 12, Recv, &my_ok(0x0003)));
    let now = state.conns().unwrap().in_flight(None);
    assert_eq!((now.transactions, now.unknown_txns), (1, 0));
    assert_eq!(unknown_txns(&state)[0].resolved_by, Some("traffic"));
}

/// Unresolved when its process exits: never a violation for what was not seen, and the
/// verdict cannot be `clean` either. A goodbye settles it (`goodbye`: the session ends
/// there, as at a close), a close too (`closed`); the database's own view at attach means it
/// was never unknown (not listed).
#[test]
fn an_unknown_transaction_state_is_incomplete_at_exit_closed_or_settled_by_the_database() {
    let exit = |tgid: u32| {
        Event::Exit(crate::events::Exit {
            ktime_ns: ATTACH_NS + 500_000_000,
            tgid,
            comm: "python".into(),
            wait_status: Some(0),
            busy_fds: vec![],
        })
    };
    let key = (31002, 7);
    // COM_QUIT then exit (issue #23: mysql2's pool.end() then process.exit(0)): the goodbye
    // ended the session, as a close would have.
    let mut quit = named(key.0);
    existing_mysql(&mut quit, key);
    quit.apply(&db_io(
        key,
        20,
        crate::events::Direction::Send,
        &[1, 0, 0, 0, 1],
    ));
    quit.apply(&exit(key.0));
    let report = quit.report(Mode::Wait, 0, vec![]);
    assert_eq!(kinds(&report), Vec::<&str>::new());
    assert_eq!(report.verdict, Verdict::Clean);
    assert_eq!(unknown_txns(&quit)[0].resolved_by, Some("goodbye"));

    let mut closed = named(key.0);
    existing_mysql(&mut closed, key);
    closed.apply(&Event::ConnClose(crate::events::ConnClose {
        ktime_ns: ATTACH_NS + 1_000_000,
        tgid: key.0,
        fd: key.1,
        request_since_ns: None,
        request_uncounted: false,
        push: false,
    }));
    assert!(closed.conns().unwrap().in_flight(None).is_idle());
    assert_eq!(unknown_txns(&closed)[0].resolved_by, Some("closed"));

    let mut viewed = named(key.0);
    existing_mysql(&mut viewed, key);
    viewed.db_state_at_attach(key, Txn::Idle);
    assert!(viewed.conns().unwrap().in_flight(None).is_idle());
    assert!(unknown_txns(&viewed).is_empty());
    viewed.apply(&exit(key.0));
    assert_eq!(
        viewed.report(Mode::Wait, 0, vec![]).verdict,
        Verdict::Violations
    );
}

/// Asked again later (a PostgreSQL backend busy with a command at attach, its title back
/// to `idle in transaction` after): resolved by the database, and open from then on.
#[test]
fn the_database_view_asked_again_resolves_an_unknown_transaction_state() {
    let key = (31003, 8);
    let mut state = named(key.0);
    existing_mysql(&mut state, key);
    state.db_state_seen(key, Txn::Open, ATTACH_NS + 1_000_000_000);
    let now = state.conns().unwrap().in_flight(None);
    assert_eq!((now.transactions, now.unknown), (1, 0));
    let listed = unknown_txns(&state);
    assert_eq!(
        (listed[0].resolved_by, listed[0].resolved_at_ms),
        (Some("database"), Some(1000))
    );
}

/// The kernel's first sight of a socket from before attach, reached while its process was
/// being attached (issue #22 item 5): classified from the survey (`existed`), its open is
/// read after the survey's entry was made. It is the same connection: counted once, seen
/// mid-way, its unknown transaction state held until a reply tells, as if the survey alone
/// had found it.
fn first_seen_existing(key: (u32, u32), ms: u64, role: Role, protocol: Protocol) -> Event {
    Event::ConnOpen(crate::events::ConnOpen {
        ktime_ns: ATTACH_NS + ms * 1_000_000,
        tgid: key.0,
        fd: key.1,
        role,
        protocol,
        peer: "127.0.0.1:3306".parse().ok(),
        local: None,
        unix_inode: None,
        existed: true,
    })
}

#[test]
fn a_connection_reached_before_the_survey_is_what_the_survey_says() {
    use crate::events::Direction::{Recv, Send};
    let key = (31010, 5);
    let mut state = named(key.0);
    existing_mysql(&mut state, key);
    // Read from the ring after the survey: its event came first in the kernel.
    state.apply(&first_seen_existing(key, 0, Role::Db, Protocol::Mysql));
    let conns = state.conns().unwrap();
    assert_eq!(conns.counts().db_opened, 1, "one connection, counted once");
    let conn = conns.conns().next().unwrap();
    assert_eq!((conn.role, conn.opened_ns), (Role::Db, None));
    assert_eq!(
        conns.in_flight(None).unknown_txns,
        1,
        "its transaction state is still unknown: an open is no evidence"
    );
    state.apply(&db_io(key, 100, Send, &my_query("SELECT SLEEP(1)")));
    assert_eq!(state.conns().unwrap().in_flight(None).queries, 1);
    state.apply(&db_io(key, 1100, Recv, &my_ok(0x0002)));
    let now = state.conns().unwrap().in_flight(None);
    assert!(now.is_idle(), "{now:?}");
    assert_eq!(unknown_txns(&state)[0].resolved_by, Some("traffic"));
}

/// A socket the kernel reached before the survey and that closed before the survey listed
/// it: one from before attach, whose close is no new connection's and no violation.
#[test]
fn a_connection_closed_before_the_survey_listed_it_is_closed_once() {
    let key = (31011, 9);
    let mut state = named(key.0);
    state.apply(&first_seen_existing(
        key,
        0,
        Role::Client,
        Protocol::Unknown,
    ));
    assert_eq!(state.conns().unwrap().counts().client_opened, 1);
    assert_eq!(
        state.conns().unwrap().conns().next().unwrap().opened_ns,
        None
    );
    state.apply(&Event::ConnClose(crate::events::ConnClose {
        ktime_ns: ATTACH_NS + 2_000_000,
        tgid: key.0,
        fd: key.1,
        request_since_ns: None,
        request_uncounted: false,
        push: false,
    }));
    let conns = state.conns().unwrap();
    assert_eq!(
        (conns.counts().client_opened, conns.counts().client_closed),
        (1, 1)
    );
    assert!(conns.in_flight(None).is_idle());
    assert!(state.violations().is_empty());
}
