//! MySQL protocol over TLS read in plaintext (uprobes on OpenSSL's SSL_read/SSL_write,
//! docs/how-it-sees.md "TLS"): PyMySQL on Python's ssl module (the system's libssl.so.3)
//! against a private MariaDB started with a self-signed certificate (db/mariadb.rs
//! `start_tls`). The same verdicts as plaintext MariaDB (connections.rs), each checked
//! against the server's own ground truth: the ledger rows, and MariaDB's Aborted_clients
//! (connections closed without COM_QUIT).

use drainwatch_tests::{
    db::{Database, MariaDbServer},
    require_root,
    shop::Stack,
    tls::{self, Case},
};

/// The scenario bodies (drainwatch_tests::tls) on a PyMySQL shop over TLS against MariaDB.
fn on(scenario: fn(&Case, &str), op: &str) {
    let db = MariaDbServer::start_tls();
    let url = db.url();
    assert!(url.ends_with("?ssl=1"), "{url}");
    let case = Case {
        // Stack::Psycopg runs fixtures/pg_shop.py, which takes mysql:// DSNs (PyMySQL).
        client: Stack::Psycopg,
        db: &db,
        tls: true,
        protocol: Some("mysql"),
    };
    scenario(&case, op);
}

/// kill -9 mid-transaction: `open_transaction` (protocol mysql), seen through TLS. Ground
/// truth: the ledger has no row (the server rolled the transaction back) and the server
/// counted one more client gone without COM_QUIT (Aborted_clients).
#[test]
fn pymysql_tls_kill9_mid_transaction_is_open_transaction() {
    require_root();
    on(tls::kill9_mid_transaction, "mk9");
}

/// SIGTERM mid-request: the shop finishes it (COMMIT), closes PyMySQL (COM_QUIT inside TLS,
/// then close) and exits 0: clean, no leak. Ground truth: both ledger rows, Aborted_clients
/// unchanged.
#[test]
fn pymysql_tls_graceful_stop_is_clean() {
    require_root();
    on(tls::graceful_stop, "mgr");
}
