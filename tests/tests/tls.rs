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
    kinds, read_report, require_root,
    shop::{Shop, Stack, PATIENCE},
    tls::{self, assert_read_in_plaintext, audit, Case},
    Drainwatch, TempDir, Value,
};

fn db_for(client: Stack) -> PgServer {
    match client {
        Stack::NodePgTls | Stack::Psycopg | Stack::Asyncpg => PgServer::start_tls(),
        // Plaintext node-pg, the stacks whose TLS drainwatch cannot read (db_stacks.rs), and
        // those that are not PostgreSQL's (db_stacks_matrix.rs).
        _ => PgServer::start(),
    }
}

/// The scenario bodies (drainwatch_tests::tls) on `client` against its PostgreSQL.
fn on(client: Stack, scenario: fn(&Case, &str), op: &str) {
    let db = db_for(client);
    let case = Case {
        client,
        db: &db,
        // Plaintext node-pg has no library to hook.
        tls: !matches!(client, Stack::NodePg),
        protocol: None,
    };
    scenario(&case, op);
}

#[test]
fn psycopg_tls_kill9_mid_transaction_is_open_transaction() {
    require_root();
    on(Stack::Psycopg, tls::kill9_mid_transaction, "k9");
}

#[test]
fn psycopg_tls_graceful_stop_is_clean() {
    require_root();
    on(Stack::Psycopg, tls::graceful_stop, "gr");
}

#[test]
fn node_pg_tls_kill9_mid_transaction_is_open_transaction() {
    require_root();
    on(Stack::NodePgTls, tls::kill9_mid_transaction, "k9");
}

#[test]
fn node_pg_tls_pool_end_then_exit_is_clean() {
    require_root();
    on(Stack::NodePgTls, tls::graceful_stop, "gr");
}

#[test]
fn node_pg_plaintext_kill9_mid_transaction_is_open_transaction() {
    require_root();
    on(Stack::NodePg, tls::kill9_mid_transaction, "k9");
}

#[test]
fn node_pg_plaintext_pool_end_then_exit_is_clean() {
    require_root();
    on(Stack::NodePg, tls::graceful_stop, "gr");
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
    let dw = audit(shop.pid, &report_path);
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
    assert_read_in_plaintext(&report, &finished.stderr, true);
}

/// The TLS uprobes are uprobe_multi links where the kernel links them (docs/hooks.md,
/// "Uprobes": no perf event, so no wait behind another drainwatch's teardown), perf events
/// elsewhere and with `DRAINWATCH_UPROBES=perf`; either way the library is hooked and read.
/// Counted from drainwatch's own fds (/proc/PID/fdinfo: a BPF link says its `link_type`).
#[test]
fn tls_uprobes_are_uprobe_multi_links_where_the_kernel_has_them() {
    require_root();
    // The kernel's own word, read apart from drainwatch's check: its BTF names the link.
    let vmlinux = std::fs::read("/sys/kernel/btf/vmlinux").expect("kernel BTF");
    let kernel_has_multi = vmlinux
        .windows(b"bpf_uprobe_multi_link\0".len())
        .any(|w| w == b"bpf_uprobe_multi_link\0");
    let db = PgServer::start_tls();
    // psycopg on libpq, sslmode=prefer: the wheel's own libssl.so.3.
    let shop = Shop::start(Stack::Psycopg, "graceful", &Stack::Psycopg.dsn(&db, true));
    let pid = shop.pid.to_string();
    for (env, multi_expected) in [
        (None, kernel_has_multi),
        (Some(("DRAINWATCH_UPROBES", "perf")), false),
    ] {
        let env: Vec<(&str, &str)> = env.into_iter().collect();
        let mut watch = Drainwatch::spawn_with_env(&["watch", "--pid", &pid, "--json", "-v"], &env);
        watch.wait_for_stderr("TLS: pid");
        watch.wait_for_stderr("drainwatch: attached to");
        let links = uprobe_multi_links(watch.pid());
        watch.signal(libc::SIGINT);
        let done = watch.finish();
        assert!(
            done.stderr.contains("OpenSSL, read in plaintext"),
            "{env:?}: {done:?}"
        );
        if multi_expected {
            // SSL_write, SSL_read and their returns at the least (OpenSSL 3 has the _ex
            // variants too).
            assert!(links >= 4, "{env:?}: {links} uprobe_multi links");
        } else {
            assert_eq!(links, 0, "{env:?}: uprobe_multi links on a perf-event run");
        }
    }
}

/// How many of process `pid`'s fds are uprobe_multi links.
fn uprobe_multi_links(pid: u32) -> usize {
    let dir = format!("/proc/{pid}/fdinfo");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path()).ok())
        .filter(|info| {
            info.lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["link_type:", "uprobe_multi"])
        })
        .count()
}
