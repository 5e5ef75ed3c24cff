//! The TLS scenarios (docs/how-it-sees.md "TLS"), one body each, run by tests/tests/tls.rs
//! (PostgreSQL: psycopg, node-pg, node-pg plaintext) and tls_mysql.rs (PyMySQL against
//! MariaDB) on their stacks: the same verdict as in plaintext, each checked against the
//! server's own ground truth (the ledger rows, the server's count of connections closed
//! without the protocol's goodbye). tls_redis.rs drives redis-cli and shares the checks.

use crate::{
    db::Database,
    kinds, read_report,
    shop::{Shop, Stack, PATIENCE},
    violations, Drainwatch, TempDir, Value,
};

/// drainwatch's audit of the shop, at -v (which names the TLS libraries it hooks).
pub fn audit(pid: u32, report: &str) -> Drainwatch {
    let pid = pid.to_string();
    Drainwatch::attach(&["audit", "--pid", &pid, "--report", report, "-v"])
}

/// Nothing about the conversation is unknown: no connection left unverified, and (when
/// `hooked`: the client speaks TLS) the library was hooked and named, in the report and at
/// -v.
pub fn assert_read_in_plaintext(report: &Value, stderr: &str, hooked: bool) {
    let unverified = report["coverage"]["unverified"].as_array().unwrap();
    assert!(unverified.is_empty(), "{report:#}");
    if hooked {
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

/// A shop stack against its database: the client, the server, and what the case checks
/// beyond the common body.
pub struct Case<'a> {
    pub client: Stack,
    pub db: &'a dyn Database,
    /// The client speaks TLS (its library must be hooked and named).
    pub tls: bool,
    /// The `protocol` the `open_transaction` must name, where the case checks it.
    pub protocol: Option<&'static str>,
}

/// kill -9 mid-transaction: `open_transaction`. Ground truth: the ledger has no row for
/// `op` (the server rolled the transaction back) and the server saw one more close without
/// goodbye.
pub fn kill9_mid_transaction(case: &Case, op: &str) {
    let db = case.db;
    let unclean_before = db.unclean_closes().unwrap();
    let mut shop = Shop::start(case.client, "graceful", &db.url());
    let dir = TempDir::new(&format!("tls-kill9-{op}"));
    let report_path = dir.path("report.json");
    let dw = audit(shop.pid, &report_path);
    let answer = shop.request_in_transaction(op);
    shop.signal(libc::SIGKILL);
    shop.wait();
    let finished = dw.finish();
    assert_eq!(answer.recv_timeout(PATIENCE).unwrap(), "");
    assert!(db.ledger_steps(op).is_empty(), "rolled back");
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
        "{:?}: {kinds:?}\n{}\n{}",
        case.client,
        finished.stdout,
        finished.stderr
    );
    let open = violations(&report, "open_transaction");
    assert_eq!(open.len(), 1);
    if let Some(protocol) = case.protocol {
        assert_eq!(open[0]["protocol"], protocol, "{report:#}");
    }
    assert_read_in_plaintext(&report, &finished.stderr, case.tls);
    assert_eq!(finished.code, 1);
}

/// SIGTERM mid-request: the shop finishes it (COMMIT), says goodbye inside TLS (psycopg and
/// PyMySQL: close(); node-pg: pool.end()) and exits 0: clean. Ground truth: both ledger rows
/// for `op`, no close without goodbye on the server.
pub fn graceful_stop(case: &Case, op: &str) {
    let db = case.db;
    let unclean_before = db.unclean_closes().unwrap();
    let mut shop = Shop::start(case.client, "graceful", &db.url());
    let dir = TempDir::new(&format!("tls-graceful-{op}"));
    let report_path = dir.path("report.json");
    let dw = audit(shop.pid, &report_path);
    let answer = shop.request_in_transaction(op);
    shop.signal(libc::SIGTERM);
    shop.open_gate();
    assert_eq!(
        answer.recv_timeout(PATIENCE).unwrap(),
        format!("done {op}\n")
    );
    assert_eq!(shop.wait().code(), Some(0));
    let finished = dw.finish();
    assert_eq!(db.ledger_steps(op), ["A", "B"]);
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
        "{:?}: {}\n{}",
        case.client,
        finished.stdout,
        finished.stderr
    );
    assert_eq!(report["verdict"], "clean", "{report:#}");
    assert_read_in_plaintext(&report, &finished.stderr, case.tls);
    assert_eq!(finished.code, 0);
}
