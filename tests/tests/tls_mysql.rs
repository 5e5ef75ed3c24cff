//! MySQL protocol over TLS read in plaintext (uprobes on OpenSSL's SSL_read/SSL_write,
//! docs/how-it-sees.md "TLS"): PyMySQL on Python's ssl module (the system's libssl.so.3)
//! against a private MariaDB started with a self-signed certificate (db/mariadb.rs
//! `start_tls`). The same verdicts as plaintext MariaDB (connections.rs), each checked
//! against the server's own ground truth: the ledger rows, and MariaDB's Aborted_clients
//! (connections closed without COM_QUIT).

use drainwatch_tests::{
    db::{Database, MariaDbServer},
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

/// A PyMySQL shop over TLS, already connected (its `ready` line), with drainwatch's audit
/// attached to it.
fn shop_under_audit(db: &MariaDbServer, report: &str) -> (Shop, Drainwatch) {
    let url = db.url();
    assert!(url.ends_with("?ssl=1"), "{url}");
    // Stack::Psycopg runs fixtures/pg_shop.py, which takes mysql:// DSNs (PyMySQL).
    let shop = Shop::start(Stack::Psycopg, "graceful", &url);
    let pid = shop.pid.to_string();
    let dw = Drainwatch::attach(&["audit", "--pid", &pid, "--report", report, "-v"]);
    (shop, dw)
}

/// Nothing about the conversation is unknown: no connection left unverified, the library
/// hooked and named (in the report and at -v).
fn assert_read_in_plaintext(report: &Value, stderr: &str) {
    let unverified = report["coverage"]["unverified"].as_array().unwrap();
    assert!(unverified.is_empty(), "{report:#}");
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

/// kill -9 mid-transaction: `open_transaction`, seen through TLS. Ground truth: the ledger
/// has no row (the server rolled the transaction back) and the server counted one more
/// client gone without COM_QUIT.
#[test]
fn pymysql_tls_kill9_mid_transaction_is_open_transaction() {
    require_root();
    let db = MariaDbServer::start_tls();
    let unclean_before = db.unclean_closes().unwrap();
    let dir = TempDir::new("tls-mysql-kill9");
    let report_path = dir.path("report.json");
    let (mut shop, dw) = shop_under_audit(&db, &report_path);
    let answer = shop.request_in_transaction("mk9");
    shop.signal(libc::SIGKILL);
    shop.wait();
    let finished = dw.finish();
    assert_eq!(answer.recv_timeout(PATIENCE).unwrap(), "");
    assert!(db.ledger_steps("mk9").is_empty(), "rolled back");
    assert_eq!(
        db.unclean_closes().unwrap(),
        unclean_before + 1,
        "{}",
        db.log_tail()
    );
    let report = read_report(&report_path);
    let kinds = kinds(&report);
    assert!(
        kinds.contains(&"open_transaction".to_string()),
        "{kinds:?}\n{}\n{}",
        finished.stdout,
        finished.stderr
    );
    assert_eq!(violations(&report, "open_transaction").len(), 1);
    let open = &violations(&report, "open_transaction")[0];
    assert_eq!(open["protocol"], "mysql", "{report:#}");
    assert_read_in_plaintext(&report, &finished.stderr);
    assert_eq!(finished.code, 1);
}

/// SIGTERM mid-request: the shop finishes it (COMMIT), closes PyMySQL (COM_QUIT inside TLS,
/// then close) and exits 0: clean, no leak. Ground truth: both ledger rows, Aborted_clients
/// unchanged.
#[test]
fn pymysql_tls_graceful_stop_is_clean() {
    require_root();
    let db = MariaDbServer::start_tls();
    let unclean_before = db.unclean_closes().unwrap();
    let dir = TempDir::new("tls-mysql-graceful");
    let report_path = dir.path("report.json");
    let (mut shop, dw) = shop_under_audit(&db, &report_path);
    let answer = shop.request_in_transaction("mgr");
    shop.signal(libc::SIGTERM);
    shop.open_gate();
    assert_eq!(answer.recv_timeout(PATIENCE).unwrap(), "done mgr\n");
    assert_eq!(shop.wait().code(), Some(0));
    let finished = dw.finish();
    assert_eq!(db.ledger_steps("mgr"), ["A", "B"]);
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
        "{}\n{}",
        finished.stdout,
        finished.stderr
    );
    assert_eq!(report["verdict"], "clean", "{report:#}");
    assert_read_in_plaintext(&report, &finished.stderr);
    assert_eq!(finished.code, 0);
}
