//! How database work ends on more real client stacks (tests/src/stacks.rs): Go's lib/pq and
//! the PostgreSQL JDBC driver, plaintext and TLS, against a private PostgreSQL; and a
//! write-behind server (psycopg: it answers first, runs the transaction in a worker) over TCP
//! and over PostgreSQL's unix socket. Every verdict is checked against the server's own
//! ground truth: the ledger (committed or not), the client's answer, the closes PostgreSQL
//! logged as unclean.

use std::time::{Duration, Instant};

use drainwatch_tests::{
    db::{Database, DbKind, MariaDbServer, PgServer},
    read_report, require_root, run_drainwatch,
    shop::{Shop, Stack, PATIENCE},
    violations, Drainwatch, Finished, TempDir,
};
use serde_json::Value;

fn audit(shop: &Shop, dir: &TempDir) -> (Drainwatch, String) {
    let report = dir.path("report.json");
    let pid = shop.pid.to_string();
    let dw = Drainwatch::attach(&["audit", "--pid", &pid, "--report", &report]);
    (dw, report)
}

fn kinds(report: &Value) -> Vec<String> {
    report["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["kind"].as_str().unwrap().to_string())
        .collect()
}

/// kill -9 mid-transaction. Ground truth: the ledger has no row (rolled back), PostgreSQL
/// logged one more close without Terminate.
fn kill9_mid_transaction(stack: Stack) {
    require_root();
    let db = PgServer::start();
    let unclean_before = db.unclean_closes().unwrap();
    let mut shop = Shop::start(stack, "graceful", &stack.dsn(&db, false));
    let dir = TempDir::new("kill9");
    let (dw, report_path) = audit(&shop, &dir);
    let answer = shop.request_in_transaction("k9");
    shop.signal(libc::SIGKILL);
    shop.wait();
    let finished = dw.finish();
    assert_eq!(answer.recv_timeout(PATIENCE).unwrap(), "", "never answered");
    assert!(db.ledger_steps("k9").is_empty(), "rolled back");
    assert_eq!(
        db.unclean_closes(),
        Some(unclean_before + 1),
        "{}",
        db.log_tail()
    );
    let report = read_report(&report_path);
    assert_eq!(
        kinds(&report),
        [
            "sigkill",
            "open_transaction",
            "leaked_db_connection",
            "inflight_at_exit"
        ],
        "{}: {report}\n{}",
        stack.name(),
        finished.stdout
    );
    assert_eq!(
        violations(&report, "open_transaction")[0]["protocol"],
        "postgres"
    );
    assert_eq!(finished.code, 1);
}

/// SIGTERM mid-request, the handler finishes it and closes the pool. Ground truth: the
/// client got its answer, the ledger has both steps, PostgreSQL saw every goodbye.
fn graceful_term(stack: Stack, tls: bool) {
    require_root();
    let db = if tls {
        PgServer::start_tls()
    } else {
        PgServer::start()
    };
    let unclean_before = db.unclean_closes().unwrap();
    let mut shop = Shop::start(stack, "graceful", &stack.dsn(&db, tls));
    let dir = TempDir::new("graceful");
    let (dw, report_path) = audit(&shop, &dir);
    let answer = shop.request_in_transaction("g");
    shop.signal(libc::SIGTERM);
    shop.open_gate();
    assert_eq!(answer.recv_timeout(PATIENCE).unwrap(), "done g\n");
    assert_eq!(shop.wait().code(), Some(0));
    let finished = dw.finish();
    assert_eq!(db.ledger_steps("g"), ["A", "B"]);
    assert_eq!(
        db.unclean_closes(),
        Some(unclean_before),
        "{}",
        db.log_tail()
    );
    let report = read_report(&report_path);
    assert_eq!(
        kinds(&report),
        Vec::<String>::new(),
        "{}: {report}\n{}",
        stack.name(),
        finished.stdout
    );
    let unverified = report["coverage"]["unverified"]
        .as_array()
        .map_or(0, Vec::len);
    if tls {
        // Go crypto/tls and Java JSSE are not read: the connection is unverified, its
        // close no leak, the verdict incomplete (never clean about what was not seen).
        assert_eq!(report["verdict"], "incomplete", "{report}");
        assert_eq!(unverified, 1, "{report}");
        assert_eq!(
            report["coverage"]["unverified"][0]["why"],
            "tls-not-decrypted"
        );
        assert_eq!(finished.code, 1, "incomplete exits 1");
    } else {
        assert_eq!(report["verdict"], "clean", "{report}");
        assert_eq!(unverified, 0, "{report}");
        assert_eq!(finished.code, 0);
    }
}

/// `wait` attached while a request's transaction is open: it must not say drained before
/// the COMMIT. Ground truth: when wait's verdict is out, the ledger already holds the
/// committed step B (a drained verdict before the COMMIT would find it empty), and wait was
/// still waiting a while after attach with the transaction open.
fn wait_mid_transaction(stack: Stack) {
    require_root();
    let db = PgServer::start();
    let shop = Shop::start(stack, "graceful", &stack.dsn(&db, false));
    let answer = shop.request_in_transaction("w");
    let pid = shop.pid.to_string();
    shop.wait_holds_until_commit(
        stack,
        &db,
        "w",
        answer,
        &["wait", "--pid", &pid, "--json", "--timeout", "60s"],
        Duration::from_millis(800),
    );
}

/// A SIGTERM handler that exits at once, mid-transaction. Ground truth: the ledger has no
/// row, the client got no answer.
fn exit_at_once_mid_transaction(stack: Stack) {
    require_root();
    let db = PgServer::start();
    let mut shop = Shop::start(stack, "exit", &stack.dsn(&db, false));
    let dir = TempDir::new("exit");
    let (dw, report_path) = audit(&shop, &dir);
    let answer = shop.request_in_transaction("x");
    shop.signal(libc::SIGTERM);
    assert_eq!(shop.wait().code(), Some(0));
    let finished = dw.finish();
    assert_eq!(answer.recv_timeout(PATIENCE).unwrap(), "", "never answered");
    assert!(db.ledger_steps("x").is_empty(), "rolled back");
    let report = read_report(&report_path);
    assert_eq!(
        kinds(&report),
        [
            "open_transaction",
            "leaked_db_connection",
            "inflight_at_exit"
        ],
        "{}: {report}\n{}",
        stack.name(),
        finished.stdout
    );
    assert_eq!(report["verdict"], "violations");
    assert_eq!(finished.code, 1);
}

#[test]
fn go_pq_kill9_mid_transaction() {
    kill9_mid_transaction(Stack::GoPq);
}

#[test]
fn go_pq_graceful_term_is_clean() {
    graceful_term(Stack::GoPq, false);
}

#[test]
fn go_pq_tls_graceful_term_is_unverified_not_a_leak() {
    graceful_term(Stack::GoPq, true);
}

#[test]
fn go_pq_wait_mid_transaction_not_drained_before_commit() {
    wait_mid_transaction(Stack::GoPq);
}

#[test]
fn go_pq_exit_at_once_mid_transaction() {
    exit_at_once_mid_transaction(Stack::GoPq);
}

#[test]
fn jdbc_kill9_mid_transaction() {
    kill9_mid_transaction(Stack::Jdbc);
}

#[test]
fn jdbc_graceful_term_is_clean() {
    graceful_term(Stack::Jdbc, false);
}

#[test]
fn jdbc_tls_graceful_term_is_unverified_not_a_leak() {
    graceful_term(Stack::Jdbc, true);
}

#[test]
fn jdbc_wait_mid_transaction_not_drained_before_commit() {
    wait_mid_transaction(Stack::Jdbc);
}

#[test]
fn jdbc_exit_at_once_mid_transaction() {
    exit_at_once_mid_transaction(Stack::Jdbc);
}

/// A write-behind server (answers first, the transaction in a worker) told to stop
/// mid-transaction exits at once. Ground truth: the client was told "done", yet the ledger
/// has no row: the work was dropped. Over TCP and over the unix socket; `check` lists the
/// database connection either way.
fn write_behind_exit(unix: bool) {
    require_root();
    let db = PgServer::start();
    let dsn = if unix { db.unix_url() } else { db.url() };
    let mut shop = Shop::start(Stack::Psycopg, "write-behind", &dsn);
    let pid = shop.pid.to_string();
    let check = run_drainwatch(&["check", "--pid", &pid]);
    assert!(
        check.stdout.contains("1 database"),
        "check lists the database connection:\n{}{}",
        check.stdout,
        check.stderr
    );
    if unix {
        assert!(
            check.stdout.contains("-> unix:") && check.stdout.contains("/.s.PGSQL."),
            "the peer is the server's socket path:\n{}",
            check.stdout
        );
    }
    let dir = TempDir::new("write-behind");
    let (dw, report_path) = audit(&shop, &dir);
    let answer = shop.request_in_transaction("wb");
    assert_eq!(answer.recv_timeout(PATIENCE).unwrap(), "done wb\n");
    shop.signal(libc::SIGTERM);
    assert_eq!(shop.wait().code(), Some(0));
    let finished = dw.finish();
    assert!(db.ledger_steps("wb").is_empty(), "rolled back");
    let report = read_report(&report_path);
    assert_eq!(
        kinds(&report),
        ["open_transaction", "leaked_db_connection"],
        "{report}\n{}",
        finished.stdout
    );
    assert_eq!(report["verdict"], "violations");
    assert_eq!(finished.code, 1);
}

#[test]
fn write_behind_exit_mid_transaction_tcp_is_open_transaction() {
    write_behind_exit(false);
}

#[test]
fn write_behind_exit_mid_transaction_unix_is_open_transaction() {
    write_behind_exit(true);
}

/// `wait` attached to a write-behind server after the client's answer, while its worker's
/// transaction is open (the one thing holding the drain): not drained until the COMMIT.
/// Ground truth: when wait's verdict is out, the ledger holds the committed step B.
fn wait_for_write_behind(db: &dyn Database, extra: &[&str]) -> Finished {
    let mut shop = Shop::start(Stack::Psycopg, "write-behind", &db.url());
    let answer = shop.request_in_transaction("wbw");
    assert_eq!(answer.recv_timeout(PATIENCE).unwrap(), "done wbw\n");
    let pid = shop.pid.to_string();
    let mut args = vec!["wait", "--pid", &pid, "--json", "--timeout", "60s"];
    args.extend_from_slice(extra);
    let mut wait = Drainwatch::spawn(&args);
    let lines = wait.stdout_lines();
    wait.wait_for_stderr("attached to");
    let held = Instant::now() + Duration::from_millis(800);
    while Instant::now() < held {
        assert!(wait.is_running(), "wait returned with the transaction open");
        std::thread::sleep(Duration::from_millis(20));
    }
    shop.open_gate();
    let verdict = lines
        .iter()
        .find(|l| l.contains("drainwatch.report/v1"))
        .expect("wait prints its report");
    assert_eq!(db.ledger_steps("wbw"), ["A", "B"], "drained before COMMIT");
    let done = wait.finish();
    assert_eq!(done.code, 0, "{done:?}");
    let report: Value = serde_json::from_str(&verdict).unwrap();
    assert!(
        report["drain"]["drained_at_ms"].as_u64().is_some(),
        "{report:#}"
    );
    let unknown = report["coverage"]["unknown_at_attach"].as_array().unwrap();
    if extra.is_empty() && db.kind() == DbKind::Mysql {
        // Its bytes could not tell before its next OK: unknown, holding the drain, said so,
        // and resolved by that OK.
        assert!(
            done.stderr.contains(&format!(
                "cannot tell whether 1 database connection from before attach is in a \
                 transaction (pid {pid} fd "
            )) && done.stderr.contains("waiting for its next reply or close"),
            "{}",
            done.stderr
        );
        assert_eq!(unknown.len(), 1, "{report:#}");
        assert_eq!(unknown[0]["what"], "transaction");
        assert_eq!(unknown[0]["resolved_by"], "traffic", "{report:#}");
    } else {
        assert!(
            !done.stderr.contains("cannot tell whether"),
            "the transaction state was known:\n{}",
            done.stderr
        );
        assert!(unknown.is_empty(), "{report:#}");
    }
    shop.signal(libc::SIGTERM);
    shop.wait();
    done
}

/// PostgreSQL: the local backend's process title tells the transaction is open.
#[test]
fn wait_on_write_behind_postgres_is_not_drained_before_commit() {
    require_root();
    let db = PgServer::start();
    wait_for_write_behind(&db, &[]);
}

/// MariaDB: its connection's bytes cannot tell before its next OK; `--db-url mysql://...`'s
/// information_schema.innodb_trx does (the URL read from a file, never printed).
#[test]
fn wait_on_write_behind_mariadb_with_db_url_is_not_drained_before_commit() {
    require_root();
    let db = MariaDbServer::start();
    let dir = TempDir::new("my-db-url");
    let url_file = dir.path("db-url");
    std::fs::write(&url_file, format!("{}\n", db.url())).unwrap();
    let source = format!("file:{url_file}");
    let done = wait_for_write_behind(&db, &["--db-url", &source]);
    assert!(
        !format!("{}{}", done.stdout, done.stderr).contains(&db.url()),
        "the URL was printed"
    );
}

/// Without `--db-url`, the state of a MariaDB connection from before attach is unknown until
/// its next OK: `wait` says it cannot judge it, naming the connection, and that unknown holds
/// the drain (docs/design.md: unknown is never "no transaction") until the worker's next reply.
/// Ground truth: the write-behind worker's transaction is open then, committed when the
/// verdict is out.
#[test]
fn wait_on_write_behind_mariadb_without_db_url_is_not_drained_before_commit() {
    require_root();
    let db = MariaDbServer::start();
    wait_for_write_behind(&db, &[]);
}

/// A database connection from before attach with no transaction and no traffic since: its
/// state is unknown without the database's view, so `wait` cannot call it drained and
/// times out (exit 4) naming it; with `--db-url` the database tells it is idle and `wait`
/// drains at once. Ground truth: the shop ran no request (only its CREATE TABLE, committed).
fn idle_db_connection_from_before_attach(db: &dyn Database, dsn: &str) {
    let shop = Shop::start(Stack::Psycopg, "graceful", dsn);
    let pid = shop.pid.to_string();
    let blind = run_drainwatch(&["wait", "--pid", &pid, "--json", "--timeout", "2s"]);
    assert_eq!(blind.code, 4, "{blind:?}");
    let reason = blind
        .stderr
        .lines()
        .chain(blind.stdout.lines())
        .find(|l| l.starts_with("drainwatch: timeout after 2s"))
        .unwrap_or_else(|| panic!("no timeout line:\n{}{}", blind.stdout, blind.stderr));
    assert!(
        reason.contains(&format!("transaction state of pid {pid} fd "))
            && reason.contains("waiting for its next reply or close")
            && reason.contains("--db-url"),
        "the one-line reason names it: {reason}"
    );
    let report = blind
        .stdout
        .lines()
        .find(|l| l.contains("drainwatch.report/v1"))
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .expect("wait prints its report");
    assert_eq!(report["verdict"], "timeout", "{report:#}");
    let unknown = &report["coverage"]["unknown_at_attach"];
    assert_eq!(unknown[0]["what"], "transaction", "{report:#}");
    assert!(unknown[0]["resolved_by"].is_null(), "{report:#}");
    assert!(report["violations"].as_array().unwrap().is_empty());

    let dir = TempDir::new("idle-db-url");
    let url_file = dir.path("db-url");
    std::fs::write(&url_file, format!("{}\n", db.url())).unwrap();
    let source = format!("file:{url_file}");
    let started = Instant::now();
    let told = run_drainwatch(&[
        "wait",
        "--pid",
        &pid,
        "--json",
        "--timeout",
        "20s",
        "--db-url",
        &source,
    ]);
    assert_eq!(told.code, 0, "{told:?}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "drained at once, not at the timeout"
    );
    assert!(
        !told.stderr.contains("cannot tell whether"),
        "{}",
        told.stderr
    );
    shop.signal(libc::SIGTERM);
}

#[test]
fn idle_mariadb_connection_from_before_attach_holds_wait_unless_the_database_tells() {
    require_root();
    let db = MariaDbServer::start();
    idle_db_connection_from_before_attach(&db, &db.url());
}

/// The same against a PostgreSQL whose backends do not put their state in their process
/// title (`update_process_title=off`), over TCP: only the connection's next ReadyForQuery
/// or `--db-url`'s pg_stat_activity can tell.
#[test]
fn idle_postgres_connection_without_titles_holds_wait_unless_the_database_tells() {
    require_root();
    let db = PgServer::start_without_titles();
    idle_db_connection_from_before_attach(&db, &db.url());
}
