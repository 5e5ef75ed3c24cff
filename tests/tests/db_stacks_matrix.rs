//! Issue #23's matrix: the client stacks studios run (Go database/sql + go-sql-driver/mysql,
//! go-redis v5, HikariCP + MariaDB Connector/J, mysqlclient, node mysql2, asyncpg) × the
//! ways a server's work ends (kill -9 mid-transaction, a graceful SIGTERM under `audit` and
//! under `stop`, `wait` attached mid-request with the pool opened before attach, a handler
//! that exits mid-transaction; and, on the Go stacks, a handler that rolls back). One body
//! per scenario, one case per stack (the `cases!`
//! table at the end). Every verdict is judged against the database's own record: the
//! ledger (committed or not), the client's answer, and the closes without goodbye that the
//! server logged (MariaDB's "Aborted connection", PostgreSQL's "unexpected EOF").
//!
//! One server of each kind for the whole binary (db/shared.rs), a database of its own per
//! case; the Go and Java shops are built once per binary (tests/src/stacks.rs).

use std::time::Duration;

use drainwatch_tests::{
    db::{shared_redis, Database, DbKind, MyDatabase, PgDatabase},
    read_report, require_root,
    shop::{Shop, Stack, PATIENCE},
    violations, Drainwatch, TempDir,
};
use serde_json::Value;

/// The database a stack's shop talks to, fresh for the case `case`.
fn database(stack: Stack, case: &str) -> Box<dyn Database> {
    let name = format!(
        "{case}_{}",
        stack
            .name()
            .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    );
    match stack {
        Stack::GoRedis => Box::new(shared_redis()),
        Stack::Asyncpg => Box::new(PgDatabase::create(&name)),
        _ => Box::new(MyDatabase::create(&name)),
    }
}

fn kinds(report: &Value) -> Vec<String> {
    let mut kinds: Vec<String> = report["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["kind"].as_str().unwrap().to_string())
        .collect();
    kinds.dedup();
    kinds
}

/// What a cut transaction must be reported as, from the database's own record: in SQL the
/// server rolls back an open transaction whose connection ends without COMMIT
/// (`open_transaction`), and each connection it logged as ended without goodbye is a
/// `leaked_db_connection`. go-redis's transaction is WATCH ... MULTI/EXEC in one write: cut
/// before that write, Redis holds no transaction (nothing was queued) and a connection
/// closed with no reply owed is clean (docs/design.md, "clean close").
fn assert_cut(
    stack: Stack,
    db: &dyn Database,
    unclean_before: Option<u64>,
    report: &Value,
    signal: &[&str],
    why: &str,
) {
    let mut want: Vec<&str> = signal.to_vec();
    let unclean = db.unclean_closes();
    let leaked = violations(report, "leaked_db_connection").len() as u64;
    match unclean {
        Some(after) => {
            want.extend(["open_transaction", "leaked_db_connection"]);
            assert_eq!(
                after - unclean_before.unwrap(),
                leaked,
                "{}: the server logged {} closes without goodbye, drainwatch {leaked}: \
                 {report:#}\n{}",
                stack.name(),
                after - unclean_before.unwrap(),
                db.log_tail()
            );
            assert_eq!(
                violations(report, "open_transaction").len(),
                1,
                "{}: {report:#}",
                stack.name()
            );
        }
        None => assert_eq!(leaked, 0, "{}: {report:#}", stack.name()),
    }
    want.push("inflight_at_exit");
    assert_eq!(kinds(report), want, "{}: {report:#}\n{why}", stack.name());
    assert_eq!(report["verdict"], "violations");
}

/// kill -9 mid-transaction. Truth: no row, no answer, the server logged the unclean closes.
fn kill9_mid_transaction(stack: Stack) {
    cut_mid_transaction(stack, "kill9", "graceful", libc::SIGKILL, &["sigkill"]);
}

/// A SIGTERM handler that exits at once, mid-transaction. Truth as for kill -9.
fn exit_mid_transaction(stack: Stack) {
    cut_mid_transaction(stack, "exit", "exit", libc::SIGTERM, &[]);
}

/// The shop in `mode` is sent `signal` while a request is inside its transaction, under
/// `audit`; it ends without answering. `signal_kinds`: the violations the signal itself is.
fn cut_mid_transaction(stack: Stack, case: &str, mode: &str, signal: i32, signal_kinds: &[&str]) {
    require_root();
    let db = database(stack, case);
    let unclean_before = db.unclean_closes();
    let mut shop = Shop::start(stack, &stack.mode(mode), &stack.dsn(&*db, false));
    let dir = TempDir::new(case);
    let report_path = dir.path("report.json");
    let pid = shop.pid.to_string();
    let dw = Drainwatch::attach(&["audit", "--pid", &pid, "--report", &report_path]);
    let answer = shop.request_in_transaction(case);
    shop.signal(signal);
    shop.wait();
    let finished = dw.finish();
    assert_eq!(answer.recv_timeout(PATIENCE).unwrap(), "", "never answered");
    assert!(db.ledger_steps(case).is_empty(), "rolled back");
    let report = read_report(&report_path);
    assert_cut(
        stack,
        &*db,
        unclean_before,
        &report,
        signal_kinds,
        &finished.stderr,
    );
    assert_eq!(finished.code, 1);
}

/// The graceful handler's truth: the client got its answer, both steps committed, every
/// connection said goodbye (or, on Redis, closed owing nothing).
fn assert_graceful(stack: Stack, db: &dyn Database, unclean_before: Option<u64>, name: &str) {
    assert_eq!(db.ledger_steps(name), ["A", "B"]);
    assert_eq!(
        db.unclean_closes(),
        unclean_before,
        "{}: {}",
        stack.name(),
        db.log_tail()
    );
}

/// SIGTERM mid-request under `audit`: the handler finishes the request, closes its pool.
fn graceful_under_audit(stack: Stack) {
    require_root();
    let db = database(stack, "audit");
    let unclean_before = db.unclean_closes();
    let mut shop = Shop::start(stack, &stack.mode("graceful"), &stack.dsn(&*db, false));
    let dir = TempDir::new("graceful");
    let report_path = dir.path("report.json");
    let pid = shop.pid.to_string();
    let dw = Drainwatch::attach(&["audit", "--pid", &pid, "--report", &report_path]);
    let answer = shop.request_in_transaction("g");
    shop.signal(libc::SIGTERM);
    shop.open_gate();
    assert_eq!(answer.recv_timeout(PATIENCE).unwrap(), "done g\n");
    assert_eq!(shop.wait().code(), Some(0));
    let finished = dw.finish();
    assert_graceful(stack, &*db, unclean_before, "g");
    let report = read_report(&report_path);
    assert_eq!(
        kinds(&report),
        Vec::<String>::new(),
        "{}: {report:#}\n{}",
        stack.name(),
        finished.stderr
    );
    assert_eq!(report["verdict"], "clean", "{report:#}");
    assert_eq!(finished.code, 0);
}

/// `stop` attached to a server whose pool was opened before attach, with a request's
/// transaction open: it sends SIGTERM, the handler finishes the request and closes its
/// pool. stop is still following it after its signal (it never calls a drain with the
/// transaction open), and the verdict is clean.
fn graceful_under_stop(stack: Stack) {
    require_root();
    let db = database(stack, "stop");
    let unclean_before = db.unclean_closes();
    let mut shop = Shop::start(stack, &stack.mode("graceful"), &stack.dsn(&*db, false));
    let answer = shop.request_in_transaction("s");
    let dir = TempDir::new("stop");
    let report_path = dir.path("report.json");
    let pid = shop.pid.to_string();
    let mut stop = Drainwatch::spawn(&["stop", "--pid", &pid, "--report", &report_path]);
    stop.wait_for_stderr("sending SIGTERM");
    assert!(
        stop.is_running(),
        "{}: stop returned with the transaction open",
        stack.name()
    );
    shop.open_gate();
    assert_eq!(answer.recv_timeout(PATIENCE).unwrap(), "done s\n");
    assert_eq!(shop.wait().code(), Some(0));
    let finished = stop.finish();
    assert_graceful(stack, &*db, unclean_before, "s");
    let report = read_report(&report_path);
    assert_eq!(
        kinds(&report),
        Vec::<String>::new(),
        "{}: {report:#}\n{}",
        stack.name(),
        finished.stderr
    );
    assert_eq!(finished.code, 0, "{finished:?}");
    assert_eq!(report["verdict"], "clean", "{report:#}");
    // The handler exits right after its pool's goodbyes, inside the quiet window: the drain
    // lasts from the signal to the exit (drained_at_ms stays null, docs/design.md, Report).
    assert!(report["drain"]["drain_ms"].as_u64().is_some(), "{report:#}");
    assert!(
        report["drain"]["exited_at_ms"].as_u64().is_some(),
        "{report:#}"
    );
}

/// `wait` attached mid-request, the pool opened before attach; MySQL stacks with `--db-url`
/// of a PROCESS-only account (`with_db_url`) or without. Not drained before the COMMIT:
/// when wait's verdict is out, the ledger holds B. Returns the connections the report left
/// unknown and unresolved.
fn wait_mid_request(stack: Stack, with_db_url: bool) -> usize {
    require_root();
    let case = if with_db_url { "waiturl" } else { "wait" };
    let db = database(stack, case);
    let shop = Shop::start(stack, &stack.mode("graceful"), &stack.dsn(&*db, false));
    let answer = shop.request_in_transaction("w");
    let pid = shop.pid.to_string();
    let dir = TempDir::new("wait");
    let url_file = dir.path("db-url");
    let mut args = vec!["wait", "--pid", &pid, "--json", "--timeout", "60s"];
    let source = format!("file:{url_file}");
    if with_db_url {
        let url = MyDatabase::monitoring_url(db.port());
        std::fs::write(&url_file, format!("{url}\n")).unwrap();
        args.extend(["--db-url", &source]);
    }
    let (report, done) =
        shop.wait_holds_until_commit(stack, &*db, "w", answer, &args, Duration::from_millis(500));
    if with_db_url {
        assert!(
            !done.stderr.contains("PROCESS"),
            "the PROCESS account sufficed:\n{}",
            done.stderr
        );
    }
    let unknown = report["coverage"]["unknown_at_attach"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["what"] == "transaction" && u["resolved_by"].is_null())
        .count();
    eprintln!(
        "{}: unknown at attach {:#}",
        stack.name(),
        report["coverage"]["unknown_at_attach"]
    );
    shop.signal(libc::SIGTERM);
    unknown
}

/// A SIGTERM handler that gives the request up: it rolls the transaction back itself
/// (MySQL ROLLBACK; go-redis: UNWATCH, nothing queued), closes the client unanswered and
/// its pool politely, exits 0. Truth: no row, no answer, no close without goodbye; the work
/// was thrown away by the shutdown: `transaction_rolled_back` (how `rollback`) where a
/// transaction was open, and the dropped request.
fn rollback_on_term(stack: Stack) {
    require_root();
    let db = database(stack, "rollback");
    let unclean_before = db.unclean_closes();
    let mut shop = Shop::start(stack, &stack.mode("rollback"), &stack.dsn(&*db, false));
    let dir = TempDir::new("rollback");
    let report_path = dir.path("report.json");
    let pid = shop.pid.to_string();
    let dw = Drainwatch::attach(&["audit", "--pid", &pid, "--report", &report_path]);
    let answer = shop.request_in_transaction("rb");
    shop.signal(libc::SIGTERM);
    assert_eq!(shop.wait().code(), Some(0));
    let finished = dw.finish();
    assert_eq!(answer.recv_timeout(PATIENCE).unwrap(), "", "never answered");
    assert!(db.ledger_steps("rb").is_empty(), "rolled back");
    assert_eq!(db.unclean_closes(), unclean_before, "{}", db.log_tail());
    let report = read_report(&report_path);
    let mut got = kinds(&report);
    got.sort();
    let mut want = vec!["request_dropped"];
    if db.kind() != DbKind::Redis {
        want.push("transaction_rolled_back");
        let rolled = violations(&report, "transaction_rolled_back");
        assert_eq!(rolled.len(), 1, "{report:#}");
        assert_eq!(rolled[0]["how"], "rollback", "{report:#}");
    }
    assert_eq!(
        got,
        want,
        "{}: {report:#}\n{}",
        stack.name(),
        finished.stderr
    );
    assert_eq!(finished.code, 1);
}

macro_rules! cases {
    ($($stack:ident => $slug:ident),* $(,)?) => {
        mod kill9 { use super::*; $(#[test] fn $slug() { kill9_mid_transaction(Stack::$stack) })* }
        mod exit { use super::*; $(#[test] fn $slug() { exit_mid_transaction(Stack::$stack) })* }
        mod audit { use super::*; $(#[test] fn $slug() { graceful_under_audit(Stack::$stack) })* }
        mod stop { use super::*; $(#[test] fn $slug() { graceful_under_stop(Stack::$stack) })* }
        mod wait { use super::*; $(#[test] fn $slug() { wait_mid_request(Stack::$stack, false); })* }
    };
}

cases! {
    GoMysql => go_mysql,
    GoRedis => go_redis,
    Hikari => hikari,
    Mysqlclient => mysqlclient,
    NodeMysql2 => node_mysql2,
    Asyncpg => asyncpg,
}

/// The Go shop's handler that rolls back (tests/fixtures/stacks/shop.go, mode `rollback`).
mod rollback {
    use super::*;

    #[test]
    fn go_mysql() {
        rollback_on_term(Stack::GoMysql)
    }
    #[test]
    fn go_redis() {
        rollback_on_term(Stack::GoRedis)
    }
}

/// MySQL stacks with `--db-url` of a PROCESS-only account: every connection from before
/// attach is told by the database, none left unknown.
mod wait_db_url {
    use super::*;

    fn case(stack: Stack) {
        assert_eq!(wait_mid_request(stack, true), 0, "{}", stack.name());
    }

    #[test]
    fn go_mysql() {
        case(Stack::GoMysql)
    }
    #[test]
    fn hikari() {
        case(Stack::Hikari)
    }
    #[test]
    fn mysqlclient() {
        case(Stack::Mysqlclient)
    }
    #[test]
    fn node_mysql2() {
        case(Stack::NodeMysql2)
    }
}
