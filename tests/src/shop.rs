//! The small database-backed "shop" servers of the fixtures, one per real client stack:
//! tests/fixtures/pg_shop.py (psycopg 3 / libpq and asyncpg, from target/pyenv; mysqlclient
//! on the system python3), tests/fixtures/node_shop.js (node-pg and node mysql2, from
//! target/nodeenv), and the Go (lib/pq, go-sql-driver/mysql, go-redis) and Java (JDBC,
//! HikariCP + MariaDB Connector/J) shops of [`crate::stacks`]. All speak one line protocol (pg_shop.py's docstring),
//! so a test drives each stack the same way: `ready pid=.. port=..` on stdout, `op NAME` ->
//! `txn NAME` on stdout once the transaction is open on the server -> `done NAME` to the
//! client once the file `gate` exists in the shop's directory.

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use crate::{
    db::Database,
    drainwatch_bin,
    stacks::{go_shop, java_classpath},
    TempDir,
};

/// How long a shop may take to start, answer or exit (a JVM starts in about a second here,
/// several on a loaded machine).
pub const PATIENCE: Duration = Duration::from_secs(60);

const PG_SHOP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/pg_shop.py");
const NODE_SHOP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/node_shop.js");

/// The fixtures' Python (`DW_PYTHON`, set by `cargo xtask test`, else target/pyenv).
pub fn python() -> PathBuf {
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
        "no Python venv with the database clients (psycopg, asyncpg, PyMySQL) at {}: run `cargo xtask setup`",
        path.display()
    );
    path
}

/// node-pg's node_modules (`DW_NODE_MODULES`, set by `cargo xtask test`, else
/// target/nodeenv/node_modules).
pub fn node_modules() -> PathBuf {
    let path = std::env::var_os("DW_NODE_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../target/nodeenv/node_modules"
            ))
        });
    assert!(
        path.join("pg").is_dir(),
        "no node-pg at {}: run `cargo xtask setup`",
        path.display()
    );
    path
}

/// A client stack: the server's language and database client library.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stack {
    /// Python, psycopg 3 (libpq): TLS when the server has ssl=on (libpq's default
    /// sslmode=prefer). Modes lossy, goodbye-exit, graceful, write-behind, exit.
    Psycopg,
    /// Python, asyncpg on asyncio: mode asyncpg-exit.
    Asyncpg,
    /// node, node-pg, plaintext.
    NodePg,
    /// node, node-pg with `ssl: {rejectUnauthorized: false}`.
    NodePgTls,
    /// Go, database/sql + lib/pq: modes graceful, exit.
    GoPq,
    /// Java, PostgreSQL JDBC: modes graceful, exit.
    Jdbc,
    /// Go, database/sql + go-sql-driver/mysql: modes graceful, exit, rollback.
    GoMysql,
    /// Go, go-redis v5 (optimistic transactions: WATCH, then MULTI..EXEC in one write):
    /// modes graceful, exit, rollback.
    GoRedis,
    /// Java, a HikariCP pool on MariaDB Connector/J: modes graceful, exit.
    Hikari,
    /// Python, mysqlclient (MySQLdb on libmariadb, standing for C/C++ servers): modes of
    /// psycopg's but write-behind.
    Mysqlclient,
    /// node, mysql2's promise pool: modes graceful, exit.
    NodeMysql2,
}

impl Stack {
    pub fn name(self) -> &'static str {
        match self {
            Stack::Psycopg => "psycopg",
            Stack::Asyncpg => "asyncpg",
            Stack::NodePg => "node-pg",
            Stack::NodePgTls => "node-pg/tls",
            Stack::GoPq => "go-lib/pq",
            Stack::Jdbc => "jdbc",
            Stack::GoMysql => "go-sql-driver/mysql",
            Stack::GoRedis => "go-redis",
            Stack::Hikari => "hikaricp/connector-j",
            Stack::Mysqlclient => "mysqlclient",
            Stack::NodeMysql2 => "node-mysql2",
        }
    }

    /// The shop mode for `ending` ("graceful", "exit", ...): asyncpg's have its prefix.
    pub fn mode(self, ending: &str) -> String {
        match self {
            Stack::Asyncpg => format!("asyncpg-{ending}"),
            _ => ending.to_string(),
        }
    }

    /// How this stack's driver is told to reach `db` over TCP, with TLS (`tls`: what the
    /// stack's users write to get it: libpq's default sslmode=prefer does it on its own
    /// against a server with ssl=on; node-pg by its own variant; lib/pq sslmode=require;
    /// JDBC sslmode=require without certificate checks) or without.
    pub fn dsn(self, db: &dyn Database, tls: bool) -> String {
        let url = db.url();
        let port = db.port();
        let name = url.rsplit('/').next().unwrap_or_default();
        match (self, tls) {
            (Stack::Psycopg | Stack::Asyncpg | Stack::NodePg | Stack::NodePgTls, _) => url,
            (Stack::GoMysql | Stack::NodeMysql2 | Stack::GoRedis, _) => url,
            (Stack::Mysqlclient, _) => url.replacen("mysql://", "mysqlclient://", 1),
            (Stack::Hikari, _) => format!("jdbc:mariadb://127.0.0.1:{port}/{name}?user=root"),
            (Stack::GoPq, tls) => format!(
                "postgres://postgres@127.0.0.1:{port}/{name}?sslmode={}",
                if tls { "require" } else { "disable" }
            ),
            (Stack::Jdbc, false) => {
                format!("jdbc:postgresql://127.0.0.1:{port}/{name}?user=postgres&sslmode=disable")
            }
            (Stack::Jdbc, true) => format!(
                "jdbc:postgresql://127.0.0.1:{port}/{name}?user=postgres&sslmode=require\
                 &sslfactory=org.postgresql.ssl.NonValidatingFactory"
            ),
        }
    }

    /// The command that runs this stack's shop in `mode` against `dsn`.
    pub fn command(self, mode: &str, dsn: &str) -> Command {
        let mut cmd = match self {
            Stack::Psycopg | Stack::Asyncpg => {
                let mut cmd = Command::new(python());
                cmd.arg(PG_SHOP);
                cmd
            }
            Stack::Mysqlclient => {
                assert!(
                    std::path::Path::new("/usr/lib/python3/dist-packages/MySQLdb").is_dir(),
                    "no MySQLdb for /usr/bin/python3: the Debian package python3-mysqldb is \
                     missing; `cargo xtask setup` installs it"
                );
                let mut cmd = Command::new("/usr/bin/python3");
                cmd.arg(PG_SHOP);
                cmd
            }
            Stack::NodeMysql2 => {
                let modules = node_modules();
                assert!(
                    modules.join("mysql2").is_dir(),
                    "no mysql2 in {}: run `cargo xtask setup`",
                    modules.display()
                );
                let mut cmd = Command::new("node");
                cmd.arg(NODE_SHOP).env("DW_NODE_MODULES", modules);
                cmd
            }
            Stack::NodePg | Stack::NodePgTls => {
                let mut cmd = Command::new("node");
                cmd.arg(NODE_SHOP).env("DW_NODE_MODULES", node_modules());
                cmd
            }
            Stack::GoPq | Stack::GoMysql | Stack::GoRedis => Command::new(go_shop()),
            Stack::Jdbc | Stack::Hikari => {
                let mut cmd = Command::new("java");
                let classpath = java_classpath();
                // Small heap, one GC thread: the machine is shared and the shop is tiny.
                cmd.args(["-Xmx64m", "-XX:+UseSerialGC", "-cp", &classpath, "Shop"]);
                cmd
            }
        };
        cmd.args([mode, dsn]);
        if self == Stack::NodePgTls {
            cmd.arg("tls");
        }
        cmd
    }
}

/// A running shop in its own temp dir (where its gate file goes); killed when dropped.
pub struct Shop {
    child: Child,
    pub lines: mpsc::Receiver<String>,
    /// Launched under audit: drainwatch's stderr, line by line.
    stderr: Option<mpsc::Receiver<String>>,
    pub pid: u32,
    pub port: u16,
    pub dir: TempDir,
}

impl Shop {
    pub fn start(stack: Stack, mode: &str, dsn: &str) -> Shop {
        Self::spawn(stack.command(mode, dsn), false)
    }

    /// Launched by `drainwatch audit --report REPORT ARGS -- <shop>`, so that every
    /// connection is seen from its start; the child is then drainwatch.
    pub fn under_audit(stack: Stack, mode: &str, dsn: &str, report: &str, args: &[&str]) -> Shop {
        let fixture = stack.command(mode, dsn);
        let mut cmd = Command::new(drainwatch_bin());
        cmd.args(["audit", "--report", report])
            .args(args)
            .arg("--")
            .arg(fixture.get_program())
            .args(fixture.get_args())
            .envs(
                fixture
                    .get_envs()
                    .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))),
            );
        Self::spawn(cmd, true)
    }

    fn spawn(mut cmd: Command, pipe_stderr: bool) -> Shop {
        let dir = TempDir::new("shop");
        if pipe_stderr {
            cmd.stderr(Stdio::piped());
        }
        let mut child = cmd
            .current_dir(&dir.0)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
        let lines = reader(child.stdout.take().unwrap());
        let stderr = child.stderr.take().map(reader);
        let ready = lines
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("{cmd:?} did not say ready"));
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
            stderr,
            pid,
            port,
            dir,
        }
    }

    /// Sends `op NAME` and waits until its transaction is open on the server; the receiver
    /// gets the answer line ("" when the connection closed unanswered).
    pub fn request_in_transaction(&self, name: &str) -> mpsc::Receiver<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        stream.write_all(format!("op {name}\n").as_bytes()).unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut answer = String::new();
            let _ = BufReader::new(stream).read_line(&mut answer);
            let _ = tx.send(answer);
        });
        self.expect_line(&format!("txn {name}"));
        rx
    }

    /// Launched under audit: waits for drainwatch to print a line containing `needle` on
    /// stderr; returns the lines read up to it.
    pub fn wait_stderr(&self, needle: &str) -> Vec<String> {
        let stderr = self.stderr.as_ref().expect("launched under audit");
        let mut seen = Vec::new();
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if let Ok(line) = stderr.recv_timeout(Duration::from_millis(50)) {
                let found = line.contains(needle);
                seen.push(line);
                if found {
                    return seen;
                }
            }
        }
        panic!("drainwatch did not print {needle:?}:\n{}", seen.join("\n"));
    }

    /// Waits for the fixture to print `line`.
    pub fn expect_line(&self, line: &str) {
        let got = self
            .lines
            .recv_timeout(PATIENCE)
            .expect("a line from the shop");
        assert_eq!(got, line);
    }

    pub fn open_gate(&self) {
        std::fs::write(self.dir.path("gate"), b"").unwrap();
    }

    /// `wait` (its arguments `wait_args`) attached while the request `answer` waits for in
    /// the transaction `op` must not say drained before the COMMIT: it is still running
    /// `hold` after attach, then the transaction is released, and when its verdict is out
    /// the ledger already holds the committed step B (a drained verdict before the COMMIT
    /// would find it without). Returns its report and how it ended.
    pub fn wait_holds_until_commit(
        &self,
        stack: Stack,
        db: &dyn Database,
        op: &str,
        answer: mpsc::Receiver<String>,
        wait_args: &[&str],
        hold: Duration,
    ) -> (serde_json::Value, crate::Finished) {
        let mut wait = crate::Drainwatch::spawn(wait_args);
        let lines = wait.stdout_lines();
        wait.wait_for_stderr("attached to");
        let held = Instant::now() + hold;
        while Instant::now() < held {
            assert!(
                wait.is_running(),
                "{}: wait returned with the transaction open",
                stack.name()
            );
            thread::sleep(Duration::from_millis(20));
        }
        self.open_gate();
        let verdict = lines
            .iter()
            .find(|l| l.contains("drainwatch.report/v1"))
            .expect("wait prints its report");
        assert_eq!(db.ledger_steps(op), ["A", "B"], "drained before COMMIT");
        assert_eq!(
            answer.recv_timeout(PATIENCE).unwrap(),
            format!("done {op}\n")
        );
        let done = wait.finish();
        assert_eq!(done.code, 0, "{}: {done:?}", stack.name());
        let report: serde_json::Value = serde_json::from_str(&verdict).unwrap();
        assert!(
            report["drain"]["drained_at_ms"].as_u64().is_some(),
            "{report:#}"
        );
        (report, done)
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on a process this test started.
        assert_eq!(unsafe { libc::kill(self.pid as i32, sig) }, 0);
    }

    /// Waits for the child (the fixture, or drainwatch when launched under audit).
    pub fn wait(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the shop did not exit");
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

fn reader(stdout: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
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
