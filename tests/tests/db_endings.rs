//! How database work ends, on real Python client libraries (tests/fixtures/pg_shop.py:
//! psycopg 3 and asyncpg from target/pyenv, installed by `cargo xtask setup`) against a
//! private PostgreSQL, plaintext and TLS, each checked against the server's own ground truth
//! (the ledger, the client's answer).

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Child, ChildStdout, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use drainwatch_tests::{
    db::{Database, MariaDbServer, PgServer},
    drainwatch_bin, read_report, require_root, violations, Drainwatch, TempDir,
};
use serde_json::Value;

const PATIENCE: Duration = Duration::from_secs(60);

fn python() -> PathBuf {
    let path = std::env::var_os("DW_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../target/pyenv/bin/python"
            ))
        });
    assert!(
        path.is_file(),
        "no Python venv with asyncpg and psycopg at {}: run `cargo xtask setup`",
        path.display()
    );
    path
}

/// pg_shop.py running in its own temp dir (where its gate file goes).
struct Shop {
    child: Child,
    lines: mpsc::Receiver<String>,
    pid: u32,
    port: u16,
    dir: TempDir,
}

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/pg_shop.py");

impl Shop {
    fn start(mode: &str, db: &PgServer) -> Shop {
        Self::start_on(mode, &db.url())
    }

    fn start_on(mode: &str, url: &str) -> Shop {
        let mut cmd = Command::new(python());
        cmd.args([SCRIPT, mode, url]);
        Self::spawn(cmd)
    }

    /// Launched by `drainwatch audit --report REPORT -- python pg_shop.py MODE URL`, so that
    /// every connection is seen from its start; `child` is then drainwatch.
    fn under_audit(mode: &str, url: &str, report: &str) -> Shop {
        let mut cmd = Command::new(drainwatch_bin());
        cmd.args(["audit", "--report", report, "--"])
            .arg(python())
            .args([SCRIPT, mode, url]);
        Self::spawn(cmd)
    }

    fn spawn(mut cmd: Command) -> Shop {
        let dir = TempDir::new("pg-shop");
        let mut child = cmd
            .current_dir(&dir.0)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start pg_shop.py");
        let lines = reader(child.stdout.take().unwrap());
        let ready = lines.recv_timeout(PATIENCE).expect("pg_shop.py says ready");
        let field = |name: &str| -> u32 {
            ready
                .split_whitespace()
                .find_map(|w| w.strip_prefix(name)?.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {ready:?}"))
        };
        let (pid, port) = (field("pid="), field("port=") as u16);
        Shop {
            child,
            lines,
            pid,
            port,
            dir,
        }
    }

    /// Sends `op NAME` and waits until its transaction is open on the server.
    fn request_in_transaction(&self, name: &str) -> mpsc::Receiver<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        stream.write_all(format!("op {name}\n").as_bytes()).unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            // One line (the server keeps the connection open after answering), or "" when
            // it is closed unanswered.
            let mut answer = String::new();
            let _ = BufReader::new(stream).read_line(&mut answer);
            let _ = tx.send(answer);
        });
        let line = self.lines.recv_timeout(PATIENCE).expect("txn line");
        assert_eq!(line, format!("txn {name}"));
        rx
    }

    fn open_gate(&self) {
        std::fs::write(self.dir.path("gate"), b"").unwrap();
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on a process this test started.
        assert_eq!(unsafe { libc::kill(self.pid as i32, sig) }, 0);
    }

    fn wait(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "pg_shop.py did not exit");
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Shop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn reader(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

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

fn kinds(report: &Value) -> Vec<String> {
    report["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["kind"].as_str().unwrap().to_string())
        .collect()
}

/// The "tidy-but-lossy" SIGTERM handler: client closed unanswered, Terminate inside the open
/// transaction, exit 0. Ground truth: the client got nothing, the ledger has no row (the
/// database rolled the transaction back).
#[test]
fn tidy_but_lossy_sigterm_is_request_dropped_and_transaction_rolled_back() {
    require_root();
    let db = PgServer::start();
    let mut shop = Shop::start("lossy", &db);
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
    let mut shop = Shop::start("goodbye-exit", &db);
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
    let mut shop = Shop::start("asyncpg-exit", &db);
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
    let mut shop = Shop::under_audit("lossy", &db.unix_url(), &report_path);
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
    let mut shop = Shop::under_audit("lossy", &dsn, &report_path);
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
    let mut shop = Shop::start_on("lossy", &db.unix_url());
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
        let mut shop = Shop::start("asyncpg-exit", &db);
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
