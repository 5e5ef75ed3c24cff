//! Replays of recorded database endings (`audit -vv` of tests/fixtures/pg_shop.py against a
//! private PostgreSQL 15): work dropped tidily, a goodbye then exit, TLS, a transaction open
//! before attach.

use super::*;
use crate::model::report::{RollbackHow, Verdict};
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
