//! How database work ends, on real Python client libraries (tests/fixtures/pg_shop.py:
//! psycopg 3 and asyncpg from target/pyenv, installed by `cargo xtask setup`) against a
//! private PostgreSQL, plaintext and TLS, each checked against the server's own ground truth
//! (the ledger, the client's answer).

use drainwatch_tests::{
    db::{Database, MariaDbServer, PgServer},
    kinds, read_report, require_root,
    shop::{Shop, Stack, PATIENCE},
    violations, Drainwatch, TempDir,
};

fn audit(shop: &Shop, dir: &TempDir) -> (Drainwatch, String) {
    audit_with(shop, dir, &[])
}

fn audit_with(shop: &Shop, dir: &TempDir, extra: &[&str]) -> (Drainwatch, String) {
    let report = dir.path("report.json");
    let pid = shop.pid.to_string();
    let mut args = vec!["audit", "--pid", &pid, "--report", &report];
    args.extend_from_slice(extra);
    let dw = Drainwatch::attach(&args);
    (dw, report)
}

/// The "tidy-but-lossy" SIGTERM handler: client closed unanswered, Terminate inside the open
/// transaction, exit 0. Ground truth: the client got nothing, the ledger has no row (the
/// database rolled the transaction back).
#[test]
fn tidy_but_lossy_sigterm_is_request_dropped_and_transaction_rolled_back() {
    require_root();
    let db = PgServer::start();
    let mut shop = Shop::start(Stack::Psycopg, "lossy", &db.url());
    let dir = TempDir::new("lossy");
    let (dw, report_path) = audit(&shop, &dir);
    let answer = shop.request_in_transaction("lossy");
    shop.signal(libc::SIGTERM);
    assert_eq!(shop.wait().code(), Some(0));
    let finished = dw.finish();
    assert_eq!(
        answer.recv_timeout(PATIENCE).unwrap(),
        "",
        "no answer was sent"
    );
    assert!(db.ledger_steps("lossy").is_empty(), "rolled back");
    let report = read_report(&report_path);
    assert_eq!(report["verdict"], "violations", "{}", finished.stdout);
    assert_eq!(
        kinds(&report),
        ["request_dropped", "transaction_rolled_back"]
    );
    assert_eq!(
        violations(&report, "transaction_rolled_back")[0]["how"],
        "goodbye"
    );
    assert_eq!(finished.code, 1);
}

/// Terminate written, then exit without close(2) (as node-pg's pool.end() then
/// process.exit(0)): clean. Ground truth: the server saw no unclean close.
#[test]
fn a_goodbye_then_exit_is_clean() {
    require_root();
    let db = PgServer::start();
    let unclean_before = db.unclean_closes();
    let mut shop = Shop::start(Stack::Psycopg, "goodbye-exit", &db.url());
    let dir = TempDir::new("goodbye");
    let (dw, report_path) = audit(&shop, &dir);
    let answer = shop.request_in_transaction("bye");
    shop.open_gate();
    assert_eq!(answer.recv_timeout(PATIENCE).unwrap(), "done bye\n");
    shop.signal(libc::SIGTERM);
    assert_eq!(shop.wait().code(), Some(0));
    let finished = dw.finish();
    assert_eq!(db.ledger_steps("bye"), ["A", "B"]);
    assert_eq!(db.unclean_closes(), unclean_before, "{}", db.log_tail());
    let report = read_report(&report_path);
    assert_eq!(kinds(&report), Vec::<String>::new(), "{}", finished.stdout);
    assert_eq!(report["verdict"], "clean");
}

/// asyncpg pool, drainwatch attached while a request's transaction is already open, then a
/// handler that exits at once: the open transaction is known from the backend's process
/// title. Ground truth: the ledger has no row.
#[test]
fn asyncpg_attached_mid_transaction_then_exit_is_open_transaction() {
    require_root();
    let db = PgServer::start();
    let mut shop = Shop::start(Stack::Asyncpg, "asyncpg-exit", &db.url());
    let _answer = shop.request_in_transaction("apg");
    let dir = TempDir::new("asyncpg");
    let (dw, report_path) = audit(&shop, &dir);
    shop.signal(libc::SIGTERM);
    shop.wait();
    let finished = dw.finish();
    assert!(db.ledger_steps("apg").is_empty(), "rolled back");
    let report = read_report(&report_path);
    let kinds = kinds(&report);
    assert!(
        kinds.contains(&"open_transaction".to_string()),
        "{kinds:?}\n{}",
        finished.stdout
    );
    assert_eq!(violations(&report, "open_transaction").len(), 1);
    assert!(kinds.contains(&"inflight_at_exit".to_string()), "{kinds:?}");
}

/// asyncpg pool opened before attach, a transaction opened after attach, then a SIGTERM
/// handler that exits at once (issue #23: reported as leaked connections and a dropped
/// request, the transaction unseen). The pool's connections are joined mid-conversation,
/// and the BEGIN's ReadyForQuery 'T' says the transaction is open. Ground truth: the ledger
/// has no row.
#[test]
fn asyncpg_transaction_opened_after_attach_then_exit_is_open_transaction() {
    require_root();
    let db = PgServer::start();
    let mut shop = Shop::start(Stack::Asyncpg, "asyncpg-exit", &db.url());
    let dir = TempDir::new("asyncpg-after");
    let (dw, report_path) = audit(&shop, &dir);
    let _answer = shop.request_in_transaction("apg2");
    shop.signal(libc::SIGTERM);
    shop.wait();
    let finished = dw.finish();
    assert!(db.ledger_steps("apg2").is_empty(), "rolled back");
    let report = read_report(&report_path);
    let kinds = kinds(&report);
    assert_eq!(
        violations(&report, "open_transaction").len(),
        1,
        "{kinds:?}\n{}\n{}",
        finished.stdout,
        finished.stderr
    );
    assert!(kinds.contains(&"inflight_at_exit".to_string()), "{kinds:?}");
}

/// asyncpg, a transaction opened after attach, and a SIGTERM handler that raises SystemExit
/// (issue #23): asyncio cancels the request's task, asyncpg sends ROLLBACK and closes its
/// connections without Terminate, the client is closed unanswered. The work was thrown away
/// by the shutdown: `transaction_rolled_back` (how `rollback`), besides the dropped request
/// and the two unclean closes. Ground truth: the ledger has no row.
#[test]
fn asyncpg_sigterm_handler_that_leaves_mid_transaction_is_transaction_rolled_back() {
    require_root();
    let db = PgServer::start();
    let mut shop = Shop::start(Stack::Asyncpg, "asyncpg-sysexit", &db.url());
    let dir = TempDir::new("asyncpg-sysexit");
    let (dw, report_path) = audit(&shop, &dir);
    let _answer = shop.request_in_transaction("apg4");
    shop.signal(libc::SIGTERM);
    shop.wait();
    let finished = dw.finish();
    assert!(db.ledger_steps("apg4").is_empty(), "rolled back");
    let report = read_report(&report_path);
    let kinds = kinds(&report);
    let rolled = violations(&report, "transaction_rolled_back");
    assert_eq!(rolled.len(), 1, "{kinds:?}\n{}", finished.stdout);
    assert_eq!(rolled[0]["how"], "rollback", "{report:#}");
    assert!(kinds.contains(&"request_dropped".to_string()), "{kinds:?}");
}

// TLS PostgreSQL (psycopg and node-pg, read in plaintext through the SSL hooks): tests/tls.rs.

/// PostgreSQL through its unix socket (the socket directory in the server's temp dir),
/// kill -9 mid-transaction: the connection is a database connection by its first bytes,
/// and the cut transaction is seen. Ground truth: the ledger has no row, the server saw one
/// more close without goodbye.
#[test]
fn unix_socket_postgres_kill9_mid_transaction_is_open_transaction_and_leak() {
    require_root();
    let db = PgServer::start();
    let unclean_before = db.unclean_closes().unwrap();
    let dir = TempDir::new("unix");
    let report_path = dir.path("report.json");
    let mut shop = Shop::under_audit(Stack::Psycopg, "lossy", &db.unix_url(), &report_path, &[]);
    let _answer = shop.request_in_transaction("unix");
    shop.signal(libc::SIGKILL);
    assert_eq!(shop.wait().code(), Some(1), "audit exits 1 on violations");
    assert!(db.ledger_steps("unix").is_empty(), "rolled back");
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
        "{report}"
    );
    assert_eq!(
        violations(&report, "open_transaction")[0]["protocol"],
        "postgres"
    );
    assert_eq!(report["connections"]["db_opened"], 1, "{report}");
}

/// MariaDB through its unix socket (PyMySQL), kill -9 mid-transaction. Ground truth: the
/// ledger has no row, the server counted one more aborted connection.
#[test]
fn unix_socket_mariadb_kill9_mid_transaction_is_open_transaction_and_leak() {
    require_root();
    let db = MariaDbServer::start();
    let unclean_before = db.unclean_closes().unwrap();
    let dir = TempDir::new("unix-my");
    let report_path = dir.path("report.json");
    let dsn = format!("mysql-unix:{}", db.socket_path().display());
    let mut shop = Shop::under_audit(Stack::Psycopg, "lossy", &dsn, &report_path, &[]);
    let _answer = shop.request_in_transaction("unixmy");
    shop.signal(libc::SIGKILL);
    assert_eq!(shop.wait().code(), Some(1), "audit exits 1 on violations");
    assert!(db.ledger_steps("unixmy").is_empty(), "rolled back");
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
        "{report}"
    );
    assert_eq!(
        violations(&report, "open_transaction")[0]["protocol"],
        "mysql"
    );
}

/// A unix-socket PostgreSQL connection from before attach, in a transaction from before
/// attach, then kill -9: found through unix sock_diag (its peer is bound to `.s.PGSQL.N`),
/// the transaction from the backend's title (`[local] idle in transaction`).
#[test]
fn unix_socket_postgres_from_before_attach_mid_transaction_kill9() {
    require_root();
    let db = PgServer::start();
    let mut shop = Shop::start(Stack::Psycopg, "lossy", &db.unix_url());
    let _answer = shop.request_in_transaction("unixold");
    let dir = TempDir::new("unix-old");
    let (dw, report_path) = audit(&shop, &dir);
    shop.signal(libc::SIGKILL);
    shop.wait();
    let finished = dw.finish();
    assert!(db.ledger_steps("unixold").is_empty(), "rolled back");
    let report = read_report(&report_path);
    assert_eq!(
        kinds(&report),
        [
            "sigkill",
            "open_transaction",
            "leaked_db_connection",
            "inflight_at_exit"
        ],
        "{report}\n{}",
        finished.stderr
    );
}

/// With process titles off (`update_process_title = off`), the backend's title says
/// nothing: the transaction open before attach is then known only from `--db-url`'s
/// pg_stat_activity (the URL read from a file, never printed). Without it, the run is the
/// issue's asyncpg miss (no open_transaction).
#[test]
fn db_url_pg_stat_activity_tells_a_transaction_open_before_attach() {
    require_root();
    let db = PgServer::start();
    db.execute("ALTER SYSTEM SET update_process_title = off");
    db.execute("SELECT pg_reload_conf()");
    let dir = TempDir::new("db-url");
    let url_file = dir.path("db-url");
    std::fs::write(&url_file, format!("{}\n", db.url())).unwrap();
    for with_url in [false, true] {
        let mut shop = Shop::start(Stack::Asyncpg, "asyncpg-exit", &db.url());
        let name = format!("dburl{with_url}");
        let _answer = shop.request_in_transaction(&name);
        let source = format!("file:{url_file}");
        let extra: &[&str] = if with_url {
            &["--db-url", &source]
        } else {
            &[]
        };
        let (dw, report_path) = audit_with(&shop, &dir, extra);
        shop.signal(libc::SIGTERM);
        shop.wait();
        let finished = dw.finish();
        assert!(db.ledger_steps(&name).is_empty(), "rolled back");
        let report = read_report(&report_path);
        let open = violations(&report, "open_transaction").len();
        assert_eq!(open, with_url as usize, "{report}\n{}", finished.stderr);
        let all = format!("{}{}{report}", finished.stdout, finished.stderr);
        assert!(!all.contains(&db.url()), "the URL was printed");
    }
}
