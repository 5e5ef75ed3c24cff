//! How database conversations end, replayed through the kernel's redaction: protocols not
//! read (MongoDB), Redis without QUIT, a goodbye then the exit, and a rollback the client asks
//! for once told to end (docs/design.md, "clean close", `transaction_rolled_back`).

use super::*;
use crate::events::{ConnOpen, DbIo, Direction, Signal};
use crate::model::conns::AtAttach;
use crate::model::protocol::tests_through_kernel;
use crate::model::report::{RollbackHow, Verdict};

const ATTACH_NS: u64 = 1_000_000_000;
const SELF_TGID: u32 = 5000;

fn named(tgid: u32) -> AuditState {
    let mut state = AuditState::new(ATTACH_NS, SELF_TGID).with_sockets();
    state.add_target(tgid, "python".into(), Origin::Named);
    state
}

fn kinds(report: &Report) -> Vec<&'static str> {
    report.violations.iter().map(|v| v.kind()).collect()
}

/// One syscall on `fd` of `tgid`, as the kernel reports it (redacted).
fn io(protocol: Protocol, (tgid, fd): (u32, u32), t: u64, dir: Direction, bytes: &[u8]) -> Event {
    let (head, tail) = tests_through_kernel(protocol, dir, bytes);
    Event::DbIo(DbIo {
        ktime_ns: ATTACH_NS + t,
        tgid,
        fd,
        dir,
        protocol,
        len: bytes.len() as u32,
        head,
        tail,
        tls: false,
    })
}

fn open_db(state: &mut AuditState, protocol: Protocol, (tgid, fd): (u32, u32), peer: &str) {
    state.apply(&Event::ConnOpen(ConnOpen {
        ktime_ns: ATTACH_NS + fd as u64,
        tgid,
        fd,
        role: Role::Db,
        protocol,
        peer: peer.parse().ok(),
        local: None,
        unix_inode: None,
        existed: false,
    }));
}

fn sigterm(state: &mut AuditState, tgid: u32, t: u64) {
    state.apply(&Event::Signal(Signal {
        ktime_ns: ATTACH_NS + t,
        sig: libc::SIGTERM,
        code: 0,
        target_pid: tgid,
        sender_pid: 1234,
        sender_tgid: 1234,
        sender_comm: "kill".into(),
        sender_cmdline: None,
        result: 0,
        group: true,
        followed: false,
        target_comm: String::new(),
    }));
}

/// A PostgreSQL message: type, length, body.
fn pg(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![ty];
    out.extend(((body.len() + 4) as u32).to_be_bytes());
    out.extend(body);
    out
}

/// asyncpg's transaction cut by a SIGTERM handler that raises SystemExit (issue #23): the
/// task is cancelled, asyncpg sends ROLLBACK, then closes without Terminate. The client
/// threw the work away on its way out: `transaction_rolled_back` (how `rollback`), besides
/// the leak. The same ROLLBACK before any stop signal is the application's business.
#[test]
fn a_rollback_asked_once_told_to_end_is_a_rolled_back_transaction() {
    for told in [false, true] {
        let key = (4545, 6);
        let mut state = named(key.0);
        open_db(&mut state, Protocol::Postgres, key, "127.0.0.1:5432");
        let run = |state: &mut AuditState, t: u64, sql: &str, reply_tag: &str, status: u8| {
            let mut q = sql.as_bytes().to_vec();
            q.push(0);
            state.apply(&io(
                Protocol::Postgres,
                key,
                t,
                Direction::Send,
                &pg(b'Q', &q),
            ));
            let mut tag = reply_tag.as_bytes().to_vec();
            tag.push(0);
            let mut reply = pg(b'C', &tag);
            reply.extend(pg(b'Z', &[status]));
            state.apply(&io(Protocol::Postgres, key, t + 1, Direction::Recv, &reply));
        };
        // Seen from the start in the middle of a session: a first query syncs it.
        run(&mut state, 10, "SELECT 1", "SELECT 1", b'I');
        run(&mut state, 20, "BEGIN", "BEGIN", b'T');
        run(
            &mut state,
            30,
            "INSERT INTO ledger VALUES (1)",
            "INSERT 0 1",
            b'T',
        );
        if told {
            sigterm(&mut state, key.0, 40);
        }
        run(&mut state, 50, "ROLLBACK;", "ROLLBACK", b'I');
        let report = state.report(Mode::Audit, 0, vec![]);
        if !told {
            assert_eq!(kinds(&report), Vec::<&str>::new());
            continue;
        }
        assert_eq!(kinds(&report), ["transaction_rolled_back"]);
        let Violation::TransactionRolledBack(rb) = &report.violations[0] else {
            panic!()
        };
        assert_eq!(
            (rb.fd, rb.how, rb.protocol),
            (6, RollbackHow::Rollback, Protocol::Postgres)
        );
    }
}

/// A COMMIT after the stop signal is the drain working: nothing to report.
#[test]
fn a_commit_once_told_to_end_is_no_violation() {
    let key = (4546, 6);
    let mut state = named(key.0);
    open_db(&mut state, Protocol::Postgres, key, "127.0.0.1:5432");
    for (t, sql, tag, status) in [
        (10, "BEGIN", "BEGIN", b'T'),
        (20, "INSERT INTO ledger VALUES (1)", "INSERT 0 1", b'T'),
        (40, "COMMIT", "COMMIT", b'I'),
    ] {
        if t == 40 {
            sigterm(&mut state, key.0, 30);
        }
        let mut q = sql.as_bytes().to_vec();
        q.push(0);
        state.apply(&io(
            Protocol::Postgres,
            key,
            t,
            Direction::Send,
            &pg(b'Q', &q),
        ));
        let mut body = tag.as_bytes().to_vec();
        body.push(0);
        let mut reply = pg(b'C', &body);
        reply.extend(pg(b'Z', &[status]));
        state.apply(&io(Protocol::Postgres, key, t + 1, Direction::Recv, &reply));
    }
    assert_eq!(
        kinds(&state.report(Mode::Audit, 0, vec![])),
        Vec::<&str>::new()
    );
}

/// Redis: DISCARD once told to end throws the queued commands away.
#[test]
fn a_redis_discard_once_told_to_end_is_a_rolled_back_transaction() {
    let key = (4547, 7);
    let mut state = named(key.0);
    open_db(&mut state, Protocol::Redis, key, "127.0.0.1:6379");
    let cmd = |args: &[&str]| {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend(format!("${}\r\n{a}\r\n", a.len()).into_bytes());
        }
        out
    };
    state.apply(&io(
        Protocol::Redis,
        key,
        10,
        Direction::Send,
        &cmd(&["MULTI"]),
    ));
    state.apply(&io(Protocol::Redis, key, 11, Direction::Recv, b"+OK\r\n"));
    state.apply(&io(
        Protocol::Redis,
        key,
        12,
        Direction::Send,
        &cmd(&["SET", "k", "v"]),
    ));
    state.apply(&io(
        Protocol::Redis,
        key,
        13,
        Direction::Recv,
        b"+QUEUED\r\n",
    ));
    sigterm(&mut state, key.0, 20);
    state.apply(&io(
        Protocol::Redis,
        key,
        30,
        Direction::Send,
        &cmd(&["DISCARD"]),
    ));
    state.apply(&io(Protocol::Redis, key, 31, Direction::Recv, b"+OK\r\n"));
    let report = state.report(Mode::Audit, 0, vec![]);
    assert_eq!(kinds(&report), ["transaction_rolled_back"]);
}

/// A MongoDB connection is recognised but not read (model/protocol/mongodb.rs): its close,
/// goodbye or not, is `unverified`, never a leak, and the verdict is `incomplete`.
#[test]
fn a_mongodb_close_is_unverified_never_a_leak() {
    use crate::events::{ConnClose, ConnOpen, DbIo, Direction};
    let mut state = named(4242);
    let peer = "127.0.0.1:27017".parse().ok();
    state.apply(&Event::ConnOpen(ConnOpen {
        ktime_ns: ATTACH_NS + 1_000,
        tgid: 4242,
        fd: 7,
        role: Role::Db,
        protocol: Protocol::Mongodb,
        peer,
        local: None,
        unix_inode: None,
        existed: false,
    }));
    for (i, dir) in [Direction::Send, Direction::Recv].into_iter().enumerate() {
        state.apply(&Event::DbIo(DbIo {
            ktime_ns: ATTACH_NS + 2_000 + i as u64,
            tgid: 4242,
            fd: 7,
            dir,
            protocol: Protocol::Mongodb,
            len: 120,
            head: Vec::new(),
            tail: Vec::new(),
            tls: false,
        }));
    }
    state.apply(&Event::ConnClose(ConnClose {
        ktime_ns: ATTACH_NS + 3_000,
        tgid: 4242,
        fd: 7,
        request_since_ns: None,
        request_uncounted: false,
        push: false,
    }));
    let report = state.report(Mode::Audit, 0, vec![]);
    assert_eq!(kinds(&report), Vec::<&str>::new());
    assert_eq!(report.verdict, Verdict::Incomplete);
    let unverified = &report.coverage.as_ref().unwrap().unverified;
    assert_eq!(
        unverified
            .iter()
            .map(|u| (u.fd, u.peer.as_deref(), u.why))
            .collect::<Vec<_>>(),
        [(7, Some("127.0.0.1:27017"), "protocol-not-read")]
    );
}

/// Redis 7.2 deprecates QUIT (docs/design.md, "clean close"): a Redis connection closed with
/// no transaction open and no reply owed is clean, by close(2) or by the exit; one closed
/// inside MULTI rolls the transaction back and leaks.
#[test]
fn a_redis_close_with_nothing_open_or_owed_is_clean() {
    use crate::events::{ConnClose, ConnOpen, DbIo, Direction};
    let io = |fd: u32, t: u64, dir: Direction, bytes: &[u8]| {
        let kept = tests_through_kernel(Protocol::Redis, dir, bytes);
        Event::DbIo(DbIo {
            ktime_ns: ATTACH_NS + t,
            tgid: 4343,
            fd,
            dir,
            protocol: Protocol::Redis,
            len: bytes.len() as u32,
            head: kept.0,
            tail: kept.1,
            tls: false,
        })
    };
    let mut state = named(4343);
    for fd in [7, 8, 9] {
        state.apply(&Event::ConnOpen(ConnOpen {
            ktime_ns: ATTACH_NS + fd as u64,
            tgid: 4343,
            fd,
            role: Role::Db,
            protocol: Protocol::Redis,
            peer: "127.0.0.1:6379".parse().ok(),
            local: None,
            unix_inode: None,
            existed: false,
        }));
    }
    let get = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
    state.apply(&io(7, 10, Direction::Send, get));
    state.apply(&io(7, 11, Direction::Recv, b"$5\r\nvalue\r\n"));
    state.apply(&io(8, 12, Direction::Send, b"*1\r\n$5\r\nMULTI\r\n"));
    state.apply(&io(8, 13, Direction::Recv, b"+OK\r\n"));
    state.apply(&io(9, 14, Direction::Send, get));
    for fd in [7, 8] {
        state.apply(&Event::ConnClose(ConnClose {
            ktime_ns: ATTACH_NS + 20 + fd as u64,
            tgid: 4343,
            fd,
            request_since_ns: None,
            request_uncounted: false,
            push: false,
        }));
    }
    // fd 9, a reply owed, is closed by the exit.
    state.apply(&Event::Exit(Exit {
        ktime_ns: ATTACH_NS + 30,
        tgid: 4343,
        comm: "redis-app".into(),
        wait_status: Some(0),
        busy_fds: Vec::new(),
    }));
    let report = state.report(Mode::Audit, 0, vec![]);
    let fds: Vec<(&str, u32)> = report
        .violations
        .iter()
        .filter_map(|v| match v {
            Violation::TransactionRolledBack(v) => Some(("transaction_rolled_back", v.fd)),
            Violation::LeakedDbConnection(v) => Some(("leaked_db_connection", v.fd)),
            _ => None,
        })
        .collect();
    assert_eq!(
        fds,
        [
            ("transaction_rolled_back", 8),
            ("leaked_db_connection", 8),
            ("leaked_db_connection", 9)
        ],
        "{:?}",
        kinds(&report)
    );
}

/// node mysql2's `pool.end()` then `process.exit(0)`: COM_QUIT on a connection from before
/// attach whose transaction state nothing told, then the exit without close(2). The goodbye
/// settles it (the session ends there): clean, not `incomplete`.
#[test]
fn a_goodbye_then_exit_settles_a_connection_unknown_since_attach() {
    use crate::events::{DbIo, Direction};
    let mut state = named(4444);
    let db = "127.0.0.1:3306".parse().ok();
    state.add_existing_conn(
        (4444, 5),
        Role::Db,
        Protocol::Mysql,
        None,
        db,
        AtAttach::Idle,
    );
    assert_eq!(
        state
            .report(Mode::Audit, 0, vec![])
            .coverage
            .unwrap()
            .unknown_at_attach
            .len(),
        1
    );
    let quit = b"\x01\0\0\0\x01";
    let (head, tail) = tests_through_kernel(Protocol::Mysql, Direction::Send, quit);
    state.apply(&Event::DbIo(DbIo {
        ktime_ns: ATTACH_NS + 10_000_000,
        tgid: 4444,
        fd: 5,
        dir: Direction::Send,
        protocol: Protocol::Mysql,
        len: quit.len() as u32,
        head,
        tail,
        tls: false,
    }));
    state.apply(&Event::Exit(Exit {
        ktime_ns: ATTACH_NS + 20_000_000,
        tgid: 4444,
        comm: "node".into(),
        wait_status: Some(0),
        busy_fds: Vec::new(),
    }));
    let report = state.report(Mode::Audit, 0, vec![]);
    assert_eq!(kinds(&report), Vec::<&str>::new());
    assert_eq!(report.verdict, Verdict::Clean);
    let unknown = &report.coverage.as_ref().unwrap().unknown_at_attach;
    assert_eq!(
        unknown
            .iter()
            .map(|u| (u.fd, u.what, u.resolved_by))
            .collect::<Vec<_>>(),
        [(5, "transaction", Some("goodbye"))]
    );
}
