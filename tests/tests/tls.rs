//! TLS read in plaintext (uprobes on OpenSSL's SSL_read/SSL_write, docs/how-it-sees.md
//! "TLS"): the same verdicts as plaintext, on real clients against a private PostgreSQL
//! with ssl=on and a self-signed certificate, each checked against the server's own ground
//! truth (the ledger rows, the server's count of connections closed without goodbye):
//! psycopg 3 on libpq with the default sslmode=prefer (libssl.so.3 shipped with the wheel,
//! a socket BIO), and node-pg (OpenSSL linked into the node binary, a memory BIO), with
//! node-pg plaintext beside it.

use std::time::{Duration, Instant};

use drainwatch_tests::{
    db::{Database, PgServer},
    read_report, require_root,
    shop::{Shop, Stack, PATIENCE},
    violations, Drainwatch, TempDir, Value,
};

fn kinds(report: &Value) -> Vec<String> {
    report["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["kind"].as_str().unwrap().to_string())
        .collect()
}

fn audit(shop: &Shop, report: &str) -> Drainwatch {
    let pid = shop.pid.to_string();
    Drainwatch::attach(&["audit", "--pid", &pid, "--report", report, "-v"])
}

fn db_for(client: Stack) -> PgServer {
    match client {
        Stack::NodePgTls | Stack::Psycopg | Stack::Asyncpg => PgServer::start_tls(),
        // Plaintext node-pg, and the stacks whose TLS drainwatch cannot read (db_stacks.rs).
        Stack::NodePg | Stack::GoPq | Stack::Jdbc => PgServer::start(),
    }
}

/// Nothing about the conversation is unknown: no connection left unverified, and (for TLS)
/// the library was hooked and named.
fn assert_read_in_plaintext(client: Stack, report: &Value, stderr: &str) {
    let unverified = report["coverage"]["unverified"].as_array().unwrap();
    assert!(unverified.is_empty(), "{report:#}");
    if !matches!(client, Stack::NodePg) {
        let libraries = report["coverage"]["tls_libraries"].to_string();
        assert!(
            libraries.contains("OpenSSL, read in plaintext"),
            "{report:#}"
        );
        assert!(
            stderr.contains("drainwatch: TLS: pid"),
            "-v names it: {stderr}"
        );
    }
}

/// kill -9 mid-transaction: `open_transaction`. Ground truth: the ledger has no row (the
/// server rolled the transaction back) and the server saw one more close without goodbye.
fn kill9_mid_transaction(client: Stack) {
    let db = db_for(client);
    let unclean_before = db.unclean_closes().unwrap();
    let mut shop = Shop::start(client, "graceful", &db.url());
    let dir = TempDir::new("tls-kill9");
    let report_path = dir.path("report.json");
    let dw = audit(&shop, &report_path);
    let answer = shop.request_in_transaction("k9");
    shop.signal(libc::SIGKILL);
    shop.wait();
    let finished = dw.finish();
    assert_eq!(answer.recv_timeout(PATIENCE).unwrap(), "");
    assert!(db.ledger_steps("k9").is_empty(), "rolled back");
    assert_eq!(db.unclean_closes().unwrap(), unclean_before + 1);
    let report = read_report(&report_path);
    let kinds = kinds(&report);
    assert!(
        kinds.contains(&"open_transaction".to_string()),
        "{client:?}: {kinds:?}\n{}\n{}",
        finished.stdout,
        finished.stderr
    );
    assert_eq!(violations(&report, "open_transaction").len(), 1);
    assert_read_in_plaintext(client, &report, &finished.stderr);
    assert_eq!(finished.code, 1);
}

/// SIGTERM mid-request: the server finishes it (COMMIT), says goodbye and exits (psycopg:
/// close(); node-pg: pool.end() then process.exit(0)). Clean: the Terminate was seen inside
/// TLS. Ground truth: both ledger rows, no close without goodbye on the server.
fn graceful_stop(client: Stack) {
    let db = db_for(client);
    let unclean_before = db.unclean_closes().unwrap();
    let mut shop = Shop::start(client, "graceful", &db.url());
    let dir = TempDir::new("tls-graceful");
    let report_path = dir.path("report.json");
    let dw = audit(&shop, &report_path);
    let answer = shop.request_in_transaction("gr");
    shop.signal(libc::SIGTERM);
    shop.open_gate();
    assert_eq!(answer.recv_timeout(PATIENCE).unwrap(), "done gr\n");
    assert_eq!(shop.wait().code(), Some(0));
    let finished = dw.finish();
    assert_eq!(db.ledger_steps("gr"), ["A", "B"]);
    assert_eq!(
        db.unclean_closes().unwrap(),
        unclean_before,
        "{}",
        db.log_tail()
    );
    let report = read_report(&report_path);
    assert_eq!(
        kinds(&report),
        Vec::<String>::new(),
        "{client:?}: {}\n{}",
        finished.stdout,
        finished.stderr
    );
    assert_eq!(report["verdict"], "clean", "{report:#}");
    assert_read_in_plaintext(client, &report, &finished.stderr);
    assert_eq!(finished.code, 0);
}

#[test]
fn psycopg_tls_kill9_mid_transaction_is_open_transaction() {
    require_root();
    kill9_mid_transaction(Stack::Psycopg);
}

#[test]
fn psycopg_tls_graceful_stop_is_clean() {
    require_root();
    graceful_stop(Stack::Psycopg);
}

#[test]
fn node_pg_tls_kill9_mid_transaction_is_open_transaction() {
    require_root();
    kill9_mid_transaction(Stack::NodePgTls);
}

#[test]
fn node_pg_tls_pool_end_then_exit_is_clean() {
    require_root();
    graceful_stop(Stack::NodePgTls);
}

#[test]
fn node_pg_plaintext_kill9_mid_transaction_is_open_transaction() {
    require_root();
    kill9_mid_transaction(Stack::NodePg);
}

#[test]
fn node_pg_plaintext_pool_end_then_exit_is_clean() {
    require_root();
    graceful_stop(Stack::NodePg);
}

/// psycopg launched under audit: libssl is loaded by the import of psycopg, after the
/// launch, and found by the session's rescan of the targets' maps (drainwatch says so at
/// -v); the connection was seen opening. kill -9 mid-transaction: `open_transaction`.
#[test]
fn psycopg_tls_launched_under_audit_kill9_is_open_transaction() {
    require_root();
    let db = PgServer::start_tls();
    let dir = TempDir::new("tls-launched");
    let report_path = dir.path("report.json");
    let mut shop = Shop::under_audit(Stack::Psycopg, "graceful", &db.url(), &report_path, &["-v"]);
    shop.wait_stderr("drainwatch: TLS: pid");
    let answer = shop.request_in_transaction("ul");
    // SAFETY: kill(2) on the fixture drainwatch launched for this test.
    assert_eq!(unsafe { libc::kill(shop.pid as i32, libc::SIGKILL) }, 0);
    let status = shop.wait();
    assert_eq!(answer.recv_timeout(PATIENCE).unwrap(), "");
    assert!(db.ledger_steps("ul").is_empty(), "rolled back");
    let report = read_report(&report_path);
    assert_eq!(status.code(), Some(1), "{report:#}");
    let kinds = kinds(&report);
    assert!(
        kinds.contains(&"open_transaction".to_string()),
        "{kinds:?}\n{report:#}"
    );
    let unverified = report["coverage"]["unverified"].as_array().unwrap();
    assert!(unverified.is_empty(), "{report:#}");
}

/// node-pg over TLS, a write-behind handler (answers, then finishes its transaction):
/// `wait` attached after the answer, while the transaction is still open, must not call
/// the server drained before its COMMIT. Ground truth: the fixture's `committed` line.
#[test]
fn node_pg_tls_wait_mid_transaction_is_not_drained_before_commit() {
    require_root();
    let db = PgServer::start_tls();
    let shop = Shop::start(Stack::NodePgTls, "write-behind", &db.url());
    let answer = shop.request_in_transaction("wb");
    assert_eq!(answer.recv_timeout(PATIENCE).unwrap(), "done wb\n");
    let pid = shop.pid.to_string();
    let mut wait = Drainwatch::spawn(&["wait", "--pid", &pid, "--json", "--timeout", "60s"]);
    let lines = wait.stdout_lines();
    wait.wait_for_stderr("attached to");
    // A queried transaction after attach: the hooks must read it (BEGIN..COMMIT below).
    let held_until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < held_until {
        assert!(
            wait.is_running(),
            "wait returned with the transaction open: {:?}",
            lines.try_recv()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    shop.open_gate();
    shop.expect_line("committed wb");
    let committed = Instant::now();
    let verdict = lines
        .iter()
        .find(|l| l.contains("drainwatch.report/v1"))
        .expect("wait prints its report after the COMMIT");
    let done = wait.finish();
    assert_eq!(done.code, 0, "{done:?}");
    assert!(committed.elapsed() < PATIENCE);
    let report: Value = serde_json::from_str(&verdict).unwrap();
    assert!(
        report["drain"]["drained_at_ms"].as_u64().is_some(),
        "{report:#}"
    );
    assert!(
        report["coverage"]["unverified"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{report:#}"
    );
    assert_eq!(db.ledger_steps("wb"), ["A", "B"]);
}

/// asyncpg (a pool of 2 on an asyncio loop; asyncio's TLS runs OpenSSL through memory BIOs,
/// as node does) over TLS: a handler that exits at once (`os._exit(0)`) with a request's
/// transaction open. Ground truth: the ledger has no row.
#[test]
fn asyncpg_tls_exit_mid_transaction_is_open_transaction() {
    require_root();
    let db = PgServer::start_tls();
    let mut shop = Shop::start(Stack::Asyncpg, "asyncpg-exit", &db.url());
    let dir = TempDir::new("tls-asyncpg");
    let report_path = dir.path("report.json");
    let dw = audit(&shop, &report_path);
    let _answer = shop.request_in_transaction("ap");
    shop.signal(libc::SIGTERM);
    shop.wait();
    let finished = dw.finish();
    assert!(db.ledger_steps("ap").is_empty(), "rolled back");
    let report = read_report(&report_path);
    let kinds = kinds(&report);
    assert!(
        kinds.contains(&"open_transaction".to_string()),
        "{kinds:?}\n{}\n{}",
        finished.stdout,
        finished.stderr
    );
    assert_read_in_plaintext(Stack::Psycopg, &report, &finished.stderr);
}
